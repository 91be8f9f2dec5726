-- Replays a request plan written by bench/wrk.py, then reports one JSON line.
--
--   wrk -tN ... -s bench/lua/plan.lua URL -- plan=PLAN_FILE threads=N [statuses]
--
-- PLAN_FILE has one request a line: METHOD \t PATH \t HEADERS \t BODY_FILE, HEADERS being
-- "Name: value" pairs separated by \31 and BODY_FILE empty or a file read once. Requests are
-- formatted once in init(); thread t of n sends plan[t], plan[t+n], plan[t+2n], ..., so two
-- threads never send the same line before the plan wraps around (it counts the wraps). N must
-- be passed: setup() runs in a separate Lua state, so a thread cannot count the others.
-- With "statuses" every answer's status is counted (costs the client, not the server). With
-- "once" a thread stops once every request of its share of the plan has been answered (miss
-- rows: a second round would find the first one's answers cached); what its connections send
-- meanwhile counts as wraps.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local function parse(line)
  local method, path, headers, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$")
  assert(method, "bad plan line: " .. line)
  local h = {}
  for pair in headers:gmatch("[^\31]+") do
    local name, value = pair:match("^([^:]+):%s*(.*)$")
    h[name] = value
  end
  return method, path, h, body
end

function init(args)
  local plan_file, count_statuses = nil, false
  nthreads, once = 1, false
  for _, arg in pairs(args) do
    if arg:match("^plan=") then plan_file = arg:sub(6) end
    if arg:match("^threads=") then nthreads = tonumber(arg:sub(9)) end
    if arg == "statuses" then count_statuses = true end
    if arg == "once" then once = true end
  end
  assert(plan_file, "usage: -- plan=FILE threads=N [statuses]")
  local bodies = {}
  plan = {}
  for line in io.lines(plan_file) do
    local method, path, headers, body_file = parse(line)
    local body = nil
    if body_file ~= "" then
      body = bodies[body_file]
      if body == nil then
        local f = assert(io.open(body_file, "rb"))
        body = f:read("*a")
        f:close()
        bodies[body_file] = body
      end
    end
    plan[#plan + 1] = wrk.format(method, path, headers, body)
  end
  assert(#plan > 0, "empty plan")
  plan_size = #plan
  sent = 0
  wraps = 0
  position = (tid or 1) - 1
  statuses = {}
  answered, exhausted, owed = 0, false, 0
  if count_statuses or once then
    response = function(status, headers, body)
      if count_statuses then
        statuses[status] = (statuses[status] or 0) + 1
      end
      answered = answered + 1
      if exhausted and answered >= owed then
        wrk.thread:stop()
      end
    end
  end
end

function request()
  if position >= #plan then
    if once and not exhausted then
      exhausted, owed = true, sent
    end
    position = position % #plan
    wraps = wraps + 1
  end
  local r = plan[position + 1]
  position = position + nthreads
  sent = sent + 1
  return r
end

function done(summary, latency, requests)
  local sent_total, wraps_total, plan_total, counted = 0, 0, 0, {}
  for _, thread in ipairs(threads) do
    sent_total = sent_total + (thread:get("sent") or 0)
    wraps_total = wraps_total + (thread:get("wraps") or 0)
    plan_total = thread:get("plan_size") or plan_total
    for status, n in pairs(thread:get("statuses") or {}) do
      counted[#counted + 1] = string.format("[%d,%d]", status, n)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
    '"status_errors":%d,"timeouts":%d,"sent":%d,"wraps":%d,"plan_size":%d,"statuses":[%s]}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout,
    sent_total, wraps_total, plan_total, table.concat(counted, ",")))
end
