"""The demo DuckDB warehouse `make dev` seeds: users, products, subscriptions, user_products, orders."""

from __future__ import annotations

from pathlib import Path

import duckdb

DEMO_TABLES = ("users", "products", "subscriptions", "user_products", "orders")

_SEED_SQL = """
CREATE OR REPLACE TABLE users AS
SELECT
    i AS id,
    'user' || i || '@example.com' AS email,
    (['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken'])[1 + i % 8] AS first_name,
    (['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen', 'Thompson'])[1 + (i // 8) % 8] AS last_name,
    (['Engineer', 'Manager', 'Analyst', 'Director'])[1 + i % 4] AS title,
    '+1-555-' || lpad(CAST(i AS VARCHAR), 4, '0') AS phone,
    (['Berlin', 'Paris', 'Austin', 'Lagos', 'Osaka'])[1 + i % 5] AS city,
    (['free', 'team', 'enterprise'])[1 + i % 3] AS plan,
    CAST(1 + i % 50 AS VARCHAR) AS seats,
    TIMESTAMP '2026-01-01 00:00:00' + INTERVAL (i) DAY AS trial_ends_at,
    TIMESTAMP '2026-06-01 00:00:00' + INTERVAL (i) MINUTE AS updated_at
FROM range(1, 501) t(i);

-- Deliberately bad rows: each is rejected alone with its reason, the rest land.
INSERT INTO users VALUES
    (9001, NULL, 'No', 'Email', 'Ghost', NULL, 'Nowhere', 'free', '1', NULL, TIMESTAMP '2026-06-02 00:00:00'),
    (9002, 'not-an-email', 'Bad', 'Address', 'Typo', NULL, 'Berlin', 'team', '3', NULL, TIMESTAMP '2026-06-02 00:00:00'),
    (9003, 'user9003@example.com', 'Ten', 'Seats', 'Buyer', NULL, 'Paris', 'team', 'ten', NULL, TIMESTAMP '2026-06-02 00:00:00'),
    (9004, 'user7@example.com', 'Older', 'Duplicate', 'Stale', NULL, 'Austin', 'free', '2', NULL, TIMESTAMP '2026-05-01 00:00:00');

CREATE OR REPLACE TABLE products AS
SELECT
    'prod_' || i AS id,
    (['Starter', 'Pro', 'Scale', 'Analytics', 'Connect'])[1 + i % 5] || ' ' || i AS name,
    'SKU-' || lpad(CAST(i AS VARCHAR), 5, '0') AS sku,
    (['software', 'service', 'add-on'])[1 + i % 3] AS category,
    TIMESTAMP '2026-06-01 00:00:00' + INTERVAL (i) MINUTE AS updated_at
FROM range(1, 41) t(i);

CREATE OR REPLACE TABLE subscriptions AS
SELECT
    'sub_' || i AS id,
    CASE WHEN i % 25 = 0 THEN NULL ELSE 'user' || (1 + i % 500) || '@example.com' END AS email,
    'Subscription ' || i AS name,
    (['active', 'trialing', 'cancelled'])[1 + i % 3] AS status,
    (['bronze', 'silver', 'gold'])[1 + i % 3] AS plan_tier,
    DATE '2027-01-01' + INTERVAL (i) DAY AS renewal_date,
    TIMESTAMP '2026-06-01 00:00:00' + INTERVAL (i) MINUTE AS updated_at
FROM range(1, 301) t(i);

CREATE OR REPLACE TABLE user_products AS
SELECT
    'prod_' || (1 + (i * 7) % 40) AS product_id,
    'user' || (1 + i % 500) || '@example.com' AS email,
    '{"role": "' || (['owner', 'admin', 'viewer'])[1 + i % 3] || '", "seats": ' || (1 + i % 10) || '}' AS relationship_fields,
    TIMESTAMP '2026-06-01 00:00:00' + INTERVAL (i) MINUTE AS updated_at
FROM range(1, 801) t(i);
INSERT INTO user_products VALUES
    ('prod_1', 'user1@example.com', '[1, 2]', TIMESTAMP '2026-06-03 00:00:00');

CREATE OR REPLACE TABLE orders AS
SELECT
    'ord_' || i AS message_id,
    CASE WHEN i % 100 = 0 THEN 'new-buyer' || i || '@example.com' ELSE 'user' || (1 + i % 500) || '@example.com' END AS email,
    (['order_placed', 'order_refunded'])[1 + CAST(i % 10 = 0 AS INTEGER)] AS event_name,
    TIMESTAMP '2026-06-01 00:00:00' + INTERVAL (i) MINUTE AS ts,
    round(10 + (i % 90) * 1.5, 2) AS amount,
    'EUR' AS currency
FROM range(1, 1001) t(i);
INSERT INTO orders VALUES ('ord_bad_ts', 'user1@example.com', 'order_placed', NULL, 12.5, 'EUR');
"""


def seed_demo_warehouse(path: Path | str, *, reseed: bool = False) -> Path:
    """Create the demo warehouse file if missing (or when reseed); returns its path."""
    path = Path(path)
    if path.exists() and not reseed:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(path)) as conn:
        conn.execute(_SEED_SQL)
    return path
