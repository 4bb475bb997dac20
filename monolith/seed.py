"""`python -m monolith seed`: bulk-load deterministic, realistic shop data (COPY and INSERT ... SELECT).

The same sizes and seed always give the same rows (ids, names, prices, timestamps), so two
databases seeded alike can be compared value by value.
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from monolith.accounts.passwords import make_password
from monolith.catalog.contract import slugify
from monolith.exceptions import MonolithError

SEED_ITERATIONS = 1000  # low on purpose: seeding thousands of users must stay fast
CHUNK_ROWS = 20_000
EPOCH = datetime(2022, 1, 1, tzinfo=UTC)
SPAN_SECONDS = 3 * 365 * 24 * 3600

Progress = Callable[[str, int], None]

CATEGORY_NAMES = [
    "Kitchen", "Garden", "Electronics", "Books", "Toys", "Sports", "Outdoor", "Office", "Bath", "Lighting",
    "Audio", "Cameras", "Tools", "Pets", "Beauty", "Health", "Music", "Games", "Travel", "Crafts",
    "Baby", "Automotive", "Furniture", "Bedding", "Storage", "Cleaning", "Coffee", "Tea", "Bikes", "Camping",
]
ADJECTIVES = ["Compact", "Classic", "Deluxe", "Ergonomic", "Rustic", "Sleek", "Smart", "Vintage", "Portable",
              "Heavy-Duty", "Lightweight", "Modern", "Premium", "Eco", "Essential", "Ultra"]
MATERIALS = ["Steel", "Oak", "Bamboo", "Cotton", "Leather", "Ceramic", "Glass", "Aluminium", "Wool", "Granite",
             "Copper", "Linen", "Rubber", "Walnut"]
NOUNS = ["Kettle", "Lamp", "Chair", "Backpack", "Speaker", "Notebook", "Mug", "Blender", "Tent", "Headphones",
         "Jacket", "Bottle", "Knife", "Desk", "Camera", "Pillow", "Watch", "Bowl", "Drill", "Scarf"]
COLORS = ["black", "white", "red", "navy", "olive", "sand", "grey", "teal"]
SIZES = ["XS", "S", "M", "L", "XL"]
STATUSES = ["placed"] * 2 + ["paid"] * 3 + ["shipped"] * 4 + ["cancelled"]
TABLES = ("orders_orderitem", "orders_order", "catalog_product", "catalog_category", "django_session", "accounts_user")


@dataclass(frozen=True, kw_only=True)
class SeedSizes:
    """How much to seed, and the RNG seed that makes it reproducible."""

    products: int = 1000
    categories: int = 20
    users: int = 10
    orders: int = 100
    seed: int = 42
    # Discontinued products stay in the table but leave the API (404); none by default, so that
    # every seeded id answers 200 (the demo and load tests request ids 1..N).
    inactive_percent: int = 0

    def __post_init__(self) -> None:
        for name in ("products", "categories", "users", "orders"):
            if getattr(self, name) < 0:
                raise MonolithError(f"--{name} {getattr(self, name)} is negative; give a count of 0 or more")
        if not 0 <= self.inactive_percent <= 100:
            raise MonolithError(f"--inactive-percent {self.inactive_percent} must be within 0..100")
        if self.products and not self.categories:
            raise MonolithError("products need a category: give --categories 1 or more")
        if self.orders and not (self.products and self.users):
            raise MonolithError("orders need products and users: give --products and --users above 0")


@dataclass(kw_only=True)
class SeedReport:
    """Rows written per table and the time it took."""

    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _copy_value(value: object) -> str:
    if value is None:
        return "\\N"
    text = value if isinstance(value, str) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _timestamp(rng: random.Random, start: datetime = EPOCH, span: int = SPAN_SECONDS) -> datetime:
    return start + timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(1_000_000))


def _ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f+00")


def seed(engine: Engine, sizes: SeedSizes, *, reset: bool = False, progress: Progress | None = None) -> SeedReport:
    """Fill empty legacy tables (or emptied ones with `reset`) in one transaction, with COPY."""
    started = time.perf_counter()
    report = SeedReport()
    rng = random.Random(sizes.seed)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if reset:
            cursor.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        else:
            cursor.execute("SELECT (SELECT count(*) FROM catalog_product) + (SELECT count(*) FROM accounts_user)")
            row = cursor.fetchone()
            existing = row[0] if row else 0
            if existing:
                raise MonolithError(
                    f"the database already holds {existing} products and users; seed fills empty tables only: "
                    "use a fresh database, or pass --reset to empty the shop's tables first"
                )

        def copy(table: str, columns: str, rows: Iterator[str]) -> int:
            count = 0
            buffer = io.StringIO()
            for line in rows:
                buffer.write(line)
                count += 1
                if count % CHUNK_ROWS == 0:
                    buffer.seek(0)
                    cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN", buffer)
                    buffer = io.StringIO()
                    if progress:
                        progress(table, count)
            buffer.seek(0)
            cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN", buffer)
            if progress:
                progress(table, count)
            report.rows[table] = count
            return count

        copy("catalog_category", "id, name, slug, parent_id", _categories(rng, sizes.categories))
        copy(
            "accounts_user", "id, username, email, password, is_staff, is_active, date_joined",
            _users(rng, sizes.users),
        )
        cursor.execute(_RANDOM_FN)
        if sizes.products:
            cursor.execute(_products_sql(sizes.products, sizes.categories, sizes.seed, sizes.inactive_percent))
        report.rows["catalog_product"] = sizes.products
        if progress:
            progress("catalog_product", sizes.products)
        report.rows["orders_order"] = report.rows["orders_orderitem"] = 0
        if sizes.orders:
            for statement in _orders_sql(sizes):
                cursor.execute(statement)
            report.rows["orders_order"] = sizes.orders
            report.rows["orders_orderitem"] = cursor.rowcount
        for table in TABLES:
            if table != "django_session":
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
                )
        raw.commit()
        cursor.execute(f"ANALYZE {', '.join(TABLES)}")
        raw.commit()
    except MonolithError:
        raw.rollback()
        raise
    except Exception as exc:
        raw.rollback()
        raise MonolithError(f"seeding failed: {exc}; did you run `python -m monolith migrate` first?") from exc
    finally:
        raw.close()
    report.seconds = time.perf_counter() - started
    return report


def _categories(rng: random.Random, count: int) -> Iterator[str]:
    top = max(1, min(count, math.ceil(count / 4)))
    seen: set[str] = set()
    for i in range(1, count + 1):
        base = CATEGORY_NAMES[(i - 1) % len(CATEGORY_NAMES)]
        round_ = (i - 1) // len(CATEGORY_NAMES)
        name = base if round_ == 0 else f"{base} {round_ + 1}"
        slug = slugify(name)
        while slug in seen:
            slug += "-x"
        seen.add(slug)
        parent = None if i <= top else rng.randint(1, top)
        yield f"{i}\t{_copy_value(name)}\t{slug}\t{_copy_value(parent)}\n"


def _users(rng: random.Random, count: int) -> Iterator[str]:
    joined = _ts(_timestamp(rng))
    admin = make_password("admin", salt="seedadmin", iterations=SEED_ITERATIONS)
    yield f"1\tadmin\tadmin@example.com\t{admin}\tt\tt\t{joined}\n"
    for n in range(1, count + 1):
        salt = f"seed{rng.getrandbits(48):012x}"
        hashed = make_password("password", salt=salt, iterations=SEED_ITERATIONS)
        yield f"{n + 1}\tuser{n}\tuser{n}@example.com\t{hashed}\tf\tt\t{_ts(_timestamp(rng))}\n"


def _sql_array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


# Rows are generated inside PostgreSQL (a Python loop is ~20x slower for 100,000 products);
# u(i, k) is a seeded hash of the row number mapped to [0, 1): deterministic per --seed.
_RANDOM_FN = """
CREATE FUNCTION pg_temp.u(i bigint, k int, seed bigint) RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (hashint8extended(i * 64 + k, seed) & 281474976710655)::float8 / 281474976710656 $$
"""


def _products_sql(count: int, categories: int, seed: int, inactive_percent: int) -> str:
    adjectives, materials, nouns = _sql_array(ADJECTIVES), _sql_array(MATERIALS), _sql_array(NOUNS)
    colors, sizes = _sql_array(COLORS), _sql_array(SIZES)
    tags = _sql_array(["gift", "new", "sale", "bestseller", "eco"])
    u = f"pg_temp.u(i, {{}}, {seed})"
    return f"""
    INSERT INTO catalog_product (id, sku, name, slug, description, price, stock, is_active, category_id,
                                 attributes, created_at, updated_at)
    SELECT i, 'SKU-' || lpad(i::text, 8, '0'), name, lower(replace(name, ' ', '-')) || '-' || i,
           format('%s %s %s made of %s. Ships in %s days; %s-year warranty.',
                  CASE WHEN left(adj, 1) IN ('A', 'E', 'I', 'O', 'U') THEN 'An' ELSE 'A' END,
                  lower(adj), lower(noun), lower(mat),
                  1 + floor({u.format(20)} * 10)::int, 1 + floor({u.format(21)} * 5)::int),
           (CASE WHEN {u.format(8)} < 0.5 THEN cents / 100 * 100 + 99 ELSE cents END) / 100.0,
           CASE WHEN {u.format(9)} < 0.12 THEN 0
                WHEN {u.format(9)} < 0.5 THEN 1 + floor({u.format(10)} * 20)::int
                ELSE 21 + floor({u.format(10)} * 480)::int END,
           {u.format(11)} >= {inactive_percent / 100},
           1 + floor({u.format(12)} * {categories})::int,
           CASE WHEN {u.format(13)} < 0.6 THEN jsonb_strip_nulls(jsonb_build_object(
               'color', ({colors})[1 + floor({u.format(14)} * {len(COLORS)})::int],
               'size', CASE WHEN {u.format(15)} < 0.5 THEN ({sizes})[1 + floor({u.format(16)} * {len(SIZES)})::int] END,
               'weight_g', CASE WHEN {u.format(17)} < 0.5 THEN 50 + floor({u.format(18)} * 24950)::int END,
               'tags', CASE WHEN {u.format(19)} < 0.2 THEN jsonb_build_array(
                   ({tags})[1 + floor({u.format(22)} * 5)::int], ({tags})[1 + (floor({u.format(22)} * 5)::int + 1) % 5])
               END))
           ELSE '{{}}'::jsonb END,
           created, created + make_interval(secs => floor({u.format(23)} * 7776000 * 1e6) / 1e6)
    FROM (
        SELECT i, adj, mat, noun, cents, created,
               adj || ' ' || mat || ' ' || noun || CASE WHEN {u.format(4)} < 0.5
                   THEN ' ' || substr('ABCKMSXZ', 1 + floor({u.format(5)} * 8)::int, 1) || '-'
                        || (100 + floor({u.format(6)} * 900)::int) ELSE '' END AS name
        FROM (
            SELECT i,
                   ({adjectives})[1 + floor({u.format(1)} * {len(ADJECTIVES)})::int] AS adj,
                   ({materials})[1 + floor({u.format(2)} * {len(MATERIALS)})::int] AS mat,
                   ({nouns})[1 + floor({u.format(3)} * {len(NOUNS)})::int] AS noun,
                   floor(exp(ln(100) + {u.format(7)} * (ln(200000) - ln(100))))::bigint AS cents,
                   timestamptz '{EPOCH.isoformat()}' + make_interval(secs => floor({u.format(24)} * {SPAN_SECONDS} * 1e6) / 1e6) AS created
            FROM generate_series(1, {count}) AS i
            OFFSET 0  -- a fence: without it the planner inlines (and recomputes) these per use
        ) AS base
        OFFSET 0
    ) AS named
    """


def _orders_sql(sizes: SeedSizes) -> list[str]:
    statuses = _sql_array(STATUSES)
    u = f"pg_temp.u(o, {{}}, {sizes.seed})"
    lines = f"""
    CREATE TEMP TABLE seed_lines ON COMMIT DROP AS
    SELECT o AS order_id, 1 + (first + j - 1) % {sizes.products} AS product_id,
           1 + floor(pg_temp.u(o * 4 + j, 31, {sizes.seed}) * 4)::int AS quantity
    FROM (SELECT o, floor({u.format(32)} * {sizes.products})::int AS first,
                 least({sizes.products}, 1 + floor({u.format(33)} * 3)::int) AS n
          FROM generate_series(1, {sizes.orders}) AS o) AS orders,
         LATERAL generate_series(1, n) AS j
    """
    orders = f"""
    INSERT INTO orders_order (id, user_id, status, total, created_at)
    SELECT o, 2 + floor({u.format(34)} * {sizes.users})::int,
           ({statuses})[1 + floor({u.format(35)} * {len(STATUSES)})::int],
           (SELECT sum(l.quantity * p.price) FROM seed_lines l JOIN catalog_product p ON p.id = l.product_id
            WHERE l.order_id = o),
           timestamptz '{EPOCH.isoformat()}' + make_interval(secs => floor({u.format(36)} * {SPAN_SECONDS} * 1e6) / 1e6)
    FROM generate_series(1, {sizes.orders}) AS o
    """
    items = """
    INSERT INTO orders_orderitem (id, order_id, product_id, quantity, unit_price)
    SELECT row_number() OVER (ORDER BY l.order_id, l.product_id), l.order_id, l.product_id, l.quantity, p.price
    FROM seed_lines l JOIN catalog_product p ON p.id = l.product_id
    """
    return [lines, orders, items]
