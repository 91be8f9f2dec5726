"""SQL statement budgets: no N+1, and a cache hit runs no SQL at all."""
import pytest

pytestmark = pytest.mark.tdd_green


def test_a_profile_miss_costs_one_statement(client, register, add_flyer, count_statements):
    user_id, _ = register("alice")
    add_flyer(user_id)

    with count_statements() as statements:
        client.get(f"/api/v1/users/{user_id}/profile")

    assert len(statements) == 1


@pytest.mark.parametrize("page_size", [1, 20, 50])
def test_a_creator_page_costs_the_same_few_statements_for_any_page_size(client, register, add_flyer,
                                                                      count_statements, page_size):
    user_id, _ = register("alice")
    for _ in range(60):
        add_flyer(user_id, images=2)

    with count_statements() as statements:
        response = client.get(f"/api/v1/users/{user_id}/flyers?page_size={page_size}")

    assert len(response.json["results"]) == page_size
    assert len(statements) == 2  # creator with count and next boundary; the page with its images joined


def test_a_single_flyer_costs_two_statements(client, register, add_flyer, count_statements):
    user_id, _ = register("alice")
    flyer_id = add_flyer(user_id, images=3)

    with count_statements() as statements:
        client.get(f"/api/v1/flyers/{flyer_id}")

    assert len(statements) == 2


@pytest.mark.parametrize("path", ["/api/v1/users/{uid}/profile", "/api/v1/users/{uid}/flyers",
                                  "/api/v1/users/{uid}/flyers?page=2&page_size=1", "/api/v1/flyers/{fid}"])
def test_a_cache_hit_runs_no_sql(client, register, add_flyer, count_statements, path):
    user_id, _ = register("alice")
    flyer_id = add_flyer(user_id)
    add_flyer(user_id)
    url = path.format(uid=user_id, fid=flyer_id)
    client.get(url)

    with count_statements() as statements:
        response = client.get(url)

    assert response.status_code == 200
    assert statements == []
