"""Generate the shop-sql example: database.sql and data/{train,validation,test}.jsonl.

Deterministic (one seeded random.Random, no set iteration, stdlib only): running it twice writes
byte-identical files. Every gold query is executed against the database; a slot filling is kept only when its
result is non-empty (not a lone 0 or NULL, at least n rows for "the n ...") and, for ordered questions, has no
tie that would make the order or the top-n ambiguous.

    python examples/shop-sql/make_data.py
"""

from __future__ import annotations

import itertools
import json
import random
import re
import sqlite3
from pathlib import Path

SEED = 2024
HERE = Path(__file__).resolve().parent
SPLITS = {"train": 400, "validation": 50, "test": 100}

# -- the database -------------------------------------------------------------------------------------------
CITIES = ["Austin", "Boston", "Chicago", "Denver", "Portland", "Seattle"]
PRODUCTS = {  # category -> (product, lowest price, highest price)
    "Books": [("Atlas of Rivers", 20, 45), ("Cooking for Two", 12, 30), ("Night Train", 8, 20),
              ("Python Basics", 25, 50)],
    "Electronics": [("USB Cable", 5, 15), ("Wireless Mouse", 15, 40), ("Desk Lamp", 20, 60),
                    ("Bluetooth Speaker", 40, 120)],
    "Garden": [("Garden Hose", 15, 45), ("Seed Kit", 5, 15), ("Pruning Shears", 10, 35), ("Watering Can", 10, 25)],
    "Kitchen": [("Chef Knife", 30, 90), ("Coffee Grinder", 25, 80), ("Cutting Board", 10, 30), ("Tea Kettle", 20, 50)],
    "Sports": [("Yoga Mat", 15, 40), ("Tennis Balls", 5, 12), ("Water Bottle", 8, 20), ("Running Cap", 10, 25)],
    "Toys": [("Puzzle Box", 10, 30), ("Toy Robot", 30, 150), ("Kite", 8, 25), ("Board Game", 20, 60)],
}
CATEGORIES = list(PRODUCTS)
CUSTOMERS = [
    "Alice Moreau", "Bruno Silva", "Chen Wei", "Dara Okafor", "Elena Petrova", "Farid Haddad", "Grace Kim",
    "Hugo Lambert", "Ines Duarte", "Jonas Berg", "Kara Singh", "Liam Walsh", "Maya Cohen", "Nils Larsen",
    "Olivia Brown", "Pablo Ruiz", "Quinn Taylor", "Rosa Marin", "Sami Aziz", "Tara Novak",
]
YEARS = ["2022", "2023", "2024"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def build_database(rng: random.Random) -> dict[str, list[tuple]]:
    """Rows of every table; 4 customers never order, 6 products are never reviewed."""
    categories = [(i, name) for i, name in enumerate(CATEGORIES, 1)]
    products, prices = [], set()
    for cat_id, cat in enumerate(CATEGORIES, 1):
        for name, lo, hi in PRODUCTS[cat]:
            price = round(rng.uniform(lo, hi), 2)
            while price in prices:  # distinct prices: "the n most expensive" is never tied
                price = round(price + 0.01, 2)
            prices.add(price)
            products.append((len(products) + 1, name, cat_id, price, rng.randint(0, 60)))
    cities = [CITIES[i % len(CITIES)] for i in range(len(CUSTOMERS))]
    rng.shuffle(cities)
    customers = [
        (i, name, city, rng.randint(2020, 2024))
        for i, (name, city) in enumerate(zip(CUSTOMERS, cities, strict=True), 1)
    ]
    buyers = rng.sample([c[0] for c in customers], 16)
    dated = sorted(
        (f"{rng.choice(YEARS)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", rng.choice(buyers),
         rng.choices(["shipped", "pending", "cancelled"], weights=[6, 2, 2])[0])
        for _ in range(80)
    )
    orders = [(i, customer, date, status) for i, (date, customer, status) in enumerate(dated, 1)]
    items = []
    for order in orders:
        for product in sorted(rng.sample(products, rng.randint(1, 3))):
            price = product[3] if rng.random() < 0.8 else round(product[3] * 0.9, 2)  # 10 % discount
            items.append((order[0], product[0], rng.randint(1, 4), price))
    reviewed = rng.sample([p[0] for p in products], len(products) - 6)
    pairs = sorted(rng.sample([(p, c[0]) for p in reviewed for c in customers], 45))
    ratings = [rng.choices([1, 2, 3, 4, 5], weights=[1, 1, 2, 3, 3])[0] for _ in pairs]
    reviews = [(i, p, c, r) for i, ((p, c), r) in enumerate(zip(pairs, ratings, strict=True), 1)]
    return {"categories": categories, "products": products, "customers": customers, "orders": orders,
            "order_items": items, "reviews": reviews}


SCHEMA = """\
CREATE TABLE categories (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category_id INTEGER NOT NULL REFERENCES categories(id),
  price REAL NOT NULL, stock INTEGER NOT NULL);
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL, signup_year INTEGER NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
  order_date TEXT NOT NULL, status TEXT NOT NULL);
CREATE TABLE order_items (order_id INTEGER NOT NULL REFERENCES orders(id), product_id INTEGER NOT NULL REFERENCES products(id),
  quantity INTEGER NOT NULL, unit_price REAL NOT NULL, PRIMARY KEY (order_id, product_id));
CREATE TABLE reviews (id INTEGER PRIMARY KEY, product_id INTEGER NOT NULL REFERENCES products(id),
  customer_id INTEGER NOT NULL REFERENCES customers(id), rating INTEGER NOT NULL);
"""


def database_sql(tables: dict[str, list[tuple]]) -> str:
    def literal(v) -> str:
        return "'" + v.replace("'", "''") + "'" if isinstance(v, str) else repr(v)

    out = [f"-- The shop database of examples/shop-sql, written by make_data.py (seed {SEED}). CC0.", SCHEMA]
    for table, rows in tables.items():
        values = ",\n".join("(" + ", ".join(literal(v) for v in row) + ")" for row in rows)
        out.append(f"INSERT INTO {table} VALUES\n{values};\n")
    return "\n".join(out)


# -- the question templates ---------------------------------------------------------------------------------
# (id, phrasings, gold SQL, ordering key or None). Slots: {city} {year} {month}/{mm} {signup_year} {category}
# {status} {product} {customer} {price} {stock} {rating} {n} {qty}. The key (an SQL expression valid in the
# SELECT list of an ordered query) is used only to reject tied slot fillings.
NOT_CANCELLED = "o.status != 'cancelled'"
REVENUE = "SUM(oi.quantity * oi.unit_price)"
J_CAT = "products p JOIN categories cat ON p.category_id = cat.id"
J_SALES = "orders o JOIN order_items oi ON oi.order_id = o.id"
J_CUST_SALES = "customers c JOIN orders o ON o.customer_id = c.id JOIN order_items oi ON oi.order_id = o.id"
J_PROD_SALES = "products p JOIN order_items oi ON oi.product_id = p.id JOIN orders o ON oi.order_id = o.id"
J_CAT_SALES = f"{J_CAT} JOIN order_items oi ON oi.product_id = p.id JOIN orders o ON oi.order_id = o.id"
YEAR_O = "strftime('%Y', o.order_date) = '{year}'"
TEMPLATES = [
    ("count_city", ["How many customers live in {city}?", "What is the number of customers from {city}?"],
     "SELECT COUNT(*) FROM customers WHERE city = '{city}'", None),
    ("count_signup", ["How many customers signed up in {signup_year}?"],
     "SELECT COUNT(*) FROM customers WHERE signup_year = {signup_year}", None),
    ("count_year", ["How many orders were placed in {year}?", "Count the orders from {year}."],
     "SELECT COUNT(*) FROM orders WHERE strftime('%Y', order_date) = '{year}'", None),
    ("count_month", ["How many orders were placed in {month} {year}?"],
     "SELECT COUNT(*) FROM orders WHERE strftime('%Y-%m', order_date) = '{year}-{mm}'", None),
    ("count_status_year",
     ["How many orders placed in {year} are {status}?", "How many {status} orders are from {year}?"],
     "SELECT COUNT(*) FROM orders WHERE status = '{status}' AND strftime('%Y', order_date) = '{year}'", None),
    ("count_category",
     ["How many products are in the {category} category?", "How many {category} products does the shop sell?"],
     f"SELECT COUNT(*) FROM {J_CAT} WHERE cat.name = '{{category}}'", None),
    ("list_city", ["List the names of the customers from {city}.", "Which customers live in {city}?"],
     "SELECT name FROM customers WHERE city = '{city}'", None),
    ("list_price_gt",
     ["List the names of products that cost more than ${price}.", "Which products are priced above ${price}?"],
     "SELECT name FROM products WHERE price > {price}", None),
    ("list_cat_price_lt", ["Which {category} products cost less than ${price}?"],
     f"SELECT p.name FROM {J_CAT} WHERE cat.name = '{{category}}' AND p.price < {{price}}", None),
    ("low_stock",
     ["Which products have fewer than {stock} units in stock?", "List the products with less than {stock} units on hand."],
     "SELECT name FROM products WHERE stock < {stock}", None),
    ("avg_price_cat",
     ["What is the average price of products in the {category} category?", "What do {category} products cost on average?"],
     f"SELECT AVG(p.price) FROM {J_CAT} WHERE cat.name = '{{category}}'", None),
    ("price_of", ["What is the price of the {product}?", "How much does the {product} cost?"],
     "SELECT price FROM products WHERE name = '{product}'", None),
    ("stock_of", ["How many units of the {product} are in stock?"],
     "SELECT stock FROM products WHERE name = '{product}'", None),
    ("category_of", ["Which category is the {product} in?", "What category does the {product} belong to?"],
     f"SELECT cat.name FROM {J_CAT} WHERE p.name = '{{product}}'", None),
    ("city_of", ["Which city does {customer} live in?"],
     "SELECT city FROM customers WHERE name = '{customer}'", None),
    ("orders_of", ["How many orders has {customer} placed?", "How many orders did {customer} make?"],
     "SELECT COUNT(*) FROM orders o JOIN customers c ON o.customer_id = c.id WHERE c.name = '{customer}'", None),
    ("order_dates_of", ["List the ids and dates of the orders of {customer}, newest first."],
     "SELECT o.id, o.order_date FROM orders o JOIN customers c ON o.customer_id = c.id "
     "WHERE c.name = '{customer}' ORDER BY o.order_date DESC", "o.order_date"),
    ("revenue_year", ["What was the total revenue in {year}?", "How much did the shop sell in {year}?"],
     f"SELECT {REVENUE} FROM {J_SALES} WHERE {NOT_CANCELLED} AND {YEAR_O}", None),
    ("revenue_city", ["What is the total revenue from customers in {city}?"],
     f"SELECT {REVENUE} FROM {J_CUST_SALES} WHERE {NOT_CANCELLED} AND c.city = '{{city}}'", None),
    ("revenue_category",
     ["What is the total revenue of the {category} category?", "How much revenue did {category} products bring in?"],
     f"SELECT {REVENUE} FROM {J_CAT_SALES} WHERE {NOT_CANCELLED} AND cat.name = '{{category}}'", None),
    ("spent_by", ["How much has {customer} spent in total?"],
     f"SELECT {REVENUE} FROM {J_CUST_SALES} WHERE {NOT_CANCELLED} AND c.name = '{{customer}}'", None),
    ("units_sold", ["How many units of the {product} have been sold?", "How many {product} units were sold?"],
     f"SELECT SUM(oi.quantity) FROM {J_PROD_SALES} WHERE {NOT_CANCELLED} AND p.name = '{{product}}'", None),
    ("avg_rating", ["What is the average rating of the {product}?"],
     "SELECT AVG(r.rating) FROM reviews r JOIN products p ON r.product_id = p.id WHERE p.name = '{product}'", None),
    ("reviews_cat_rating", ["How many reviews of {category} products have a rating of {rating} or more?"],
     f"SELECT COUNT(*) FROM {J_CAT} JOIN reviews r ON r.product_id = p.id WHERE cat.name = '{{category}}' "
     "AND r.rating >= {rating}", None),
    ("top_expensive",
     ["List the names of the {n} most expensive products.", "What are the {n} priciest products?"],
     "SELECT name FROM products ORDER BY price DESC LIMIT {n}", "price"),
    ("cheapest_in_cat", ["List the names of the {n} cheapest {category} products."],
     f"SELECT p.name FROM {J_CAT} WHERE cat.name = '{{category}}' ORDER BY p.price LIMIT {{n}}", "p.price"),
    ("top_customer_year", ["Which customer placed the most orders in {year}?"],
     f"SELECT c.name FROM customers c JOIN orders o ON o.customer_id = c.id WHERE {YEAR_O} "
     "GROUP BY c.id ORDER BY COUNT(*) DESC LIMIT 1", "COUNT(*)"),
    ("top_spender_city",
     ["Which customer from {city} spent the most?", "Who is the biggest spender in {city}?"],
     f"SELECT c.name FROM {J_CUST_SALES} WHERE {NOT_CANCELLED} AND c.city = '{{city}}' "
     f"GROUP BY c.id ORDER BY {REVENUE} DESC LIMIT 1", REVENUE),
    ("best_seller_cat", ["Which {category} product has sold the most units?"],
     f"SELECT p.name FROM {J_CAT_SALES} WHERE {NOT_CANCELLED} AND cat.name = '{{category}}' "
     "GROUP BY p.id ORDER BY SUM(oi.quantity) DESC LIMIT 1", "SUM(oi.quantity)"),
    ("top_rated_cat", ["Which {category} product has the highest average rating?"],
     f"SELECT p.name FROM {J_CAT} JOIN reviews r ON r.product_id = p.id WHERE cat.name = '{{category}}' "
     "GROUP BY p.id ORDER BY AVG(r.rating) DESC LIMIT 1", "AVG(r.rating)"),
    ("top_category_year", ["Which category had the highest revenue in {year}?"],
     f"SELECT cat.name FROM {J_CAT_SALES} WHERE {NOT_CANCELLED} AND {YEAR_O} "
     f"GROUP BY cat.id ORDER BY {REVENUE} DESC LIMIT 1", REVENUE),
    ("orders_per_city_year",
     ["How many orders did customers from each city place in {year}?", "For each city, count the orders placed in {year}."],
     f"SELECT c.city, COUNT(*) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE {YEAR_O} "
     "GROUP BY c.city", None),
    ("products_per_cat_price", ["For each category, how many products cost more than ${price}?"],
     f"SELECT cat.name, COUNT(*) FROM {J_CAT} WHERE p.price > {{price}} GROUP BY cat.name", None),
    ("revenue_per_cat_year", ["What was the revenue of each category in {year}?"],
     f"SELECT cat.name, {REVENUE} FROM {J_CAT_SALES} WHERE {NOT_CANCELLED} AND {YEAR_O} GROUP BY cat.name", None),
    ("customers_per_city_signup", ["How many customers in each city signed up in {signup_year} or later?"],
     "SELECT city, COUNT(*) FROM customers WHERE signup_year >= {signup_year} GROUP BY city", None),
    ("never_ordered_city", ["Which customers from {city} have never placed an order?"],
     "SELECT name FROM customers WHERE city = '{city}' AND id NOT IN (SELECT customer_id FROM orders)", None),
    ("no_order_city_year", ["Which customers from {city} placed no orders in {year}?"],
     "SELECT name FROM customers WHERE city = '{city}' AND id NOT IN "
     "(SELECT customer_id FROM orders WHERE strftime('%Y', order_date) = '{year}')", None),
    ("never_reviewed_cat",
     ["Which {category} products have no reviews?", "List the {category} products that have never been reviewed."],
     f"SELECT p.name FROM {J_CAT} WHERE cat.name = '{{category}}' "
     "AND p.id NOT IN (SELECT product_id FROM reviews)", None),
    ("buyers_of", ["Which customers bought the {product}?", "Who has bought the {product}?"],
     f"SELECT DISTINCT c.name FROM {J_CUST_SALES} JOIN products p ON oi.product_id = p.id "
     f"WHERE {NOT_CANCELLED} AND p.name = '{{product}}'", None),
    ("distinct_products_of", ["How many different products has {customer} bought?"],
     f"SELECT COUNT(DISTINCT oi.product_id) FROM {J_CUST_SALES} "
     f"WHERE {NOT_CANCELLED} AND c.name = '{{customer}}'", None),
    ("avg_order_value_year", ["What was the average order value in {year}?"],
     f"SELECT AVG(total) FROM (SELECT {REVENUE} AS total FROM {J_SALES} "
     f"WHERE {NOT_CANCELLED} AND {YEAR_O} GROUP BY o.id)", None),
    ("avg_order_value_city", ["What is the average order value of customers in {city}?"],
     f"SELECT AVG(total) FROM (SELECT {REVENUE} AS total FROM {J_CUST_SALES} WHERE {NOT_CANCELLED} "
     "AND c.city = '{city}' GROUP BY o.id)", None),
    ("big_orders_year", ["Which orders from {year} contain more than {qty} units in total? Give their ids."],
     f"SELECT o.id FROM {J_SALES} WHERE {YEAR_O} GROUP BY o.id HAVING SUM(oi.quantity) > {{qty}}", None),
]
SLOTS = {
    "city": CITIES, "year": YEARS, "month": MONTHS, "signup_year": ["2020", "2021", "2022", "2023", "2024"],
    "category": CATEGORIES, "status": ["shipped", "pending", "cancelled"],
    "product": [name for cat in CATEGORIES for name, _, _ in PRODUCTS[cat]], "customer": CUSTOMERS,
    "price": ["10", "15", "20", "30", "40", "60"], "stock": ["15", "20", "30", "40"], "rating": ["3", "4", "5"],
    "n": ["2", "3", "5"], "qty": ["4", "6", "8"],
}
_SLOT = re.compile(r"\{(\w+)\}")


def acceptable(conn: sqlite3.Connection, sql: str, key: str | None) -> bool:
    rows = conn.execute(sql).fetchall()
    if not rows or (len(rows) == 1 and len(rows[0]) == 1 and rows[0][0] in (None, 0)):
        return False
    limit = re.search(r" LIMIT (\d+)$", sql)
    if limit and len(rows) < int(limit.group(1)):
        return False
    if key is None:
        return True
    # the ordering key of the first n+1 rows (all rows without LIMIT): any tie makes the gold ambiguous
    check = re.sub(r"^SELECT .*? FROM ", f"SELECT {key} FROM ", sql, count=1)
    if limit:
        check = check[: check.rindex(" LIMIT ")] + f" LIMIT {int(limit.group(1)) + 1}"
    keys = [r[0] for r in conn.execute(check)]
    return all(a != b for a, b in zip(keys, keys[1:], strict=False))


def candidates(conn: sqlite3.Connection, rng: random.Random) -> list[list[dict]]:
    """For each template, its acceptable instances: every slot filling once (shuffled, phrasings rotated),
    then the same fillings with the other phrasings."""
    per_template = []
    for tid, phrasings, sql, key in TEMPLATES:
        slots = list(dict.fromkeys(_SLOT.findall(phrasings[0])))
        fillings = []
        for combo in itertools.product(*(SLOTS[s] for s in slots)):
            values = dict(zip(slots, combo, strict=True))
            if "month" in values:
                values["mm"] = f"{MONTHS.index(values['month']) + 1:02d}"
            gold = sql.format(**values)
            if acceptable(conn, gold, key):
                fillings.append((values, gold))
        rng.shuffle(fillings)
        items = [
            {"question": phrasings[(i + j) % len(phrasings)].format(**values), "sql": gold, "template": tid}
            for j in range(len(phrasings)) for i, (values, gold) in enumerate(fillings)
        ]
        per_template.append(items)
    return per_template


def main() -> None:
    rng = random.Random(SEED)
    tables = build_database(rng)
    sql_text = database_sql(tables)
    (HERE / "database.sql").write_text(sql_text, encoding="utf-8")
    conn = sqlite3.connect(":memory:")
    conn.executescript(sql_text)

    total, chosen, seen = sum(SPLITS.values()), [], set()
    queues = candidates(conn, rng)
    while len(chosen) < total and any(queues):  # round robin over the templates: an even mix
        for queue in queues:
            while queue and len(chosen) < total:
                item = queue.pop(0)
                if item["question"].lower() not in seen:
                    seen.add(item["question"].lower())
                    chosen.append(item)
                    break
    if len(chosen) < total:
        raise SystemExit(f"only {len(chosen)} distinct questions; {total} needed")

    # the phrasings of one gold query stay in one split: test questions never restate a training question
    groups: dict[str, list[dict]] = {}
    for item in chosen:
        groups.setdefault(item["sql"], []).append(item)
    pending = list(groups.values())
    rng.shuffle(pending)
    splits: dict[str, list[dict]] = {}
    for split in ("test", "validation", "train"):
        rows, rest = [], []
        for group in pending:
            (rows.extend if len(rows) + len(group) <= SPLITS[split] else rest.append)(group)
        splits[split], pending = rows, rest
        rng.shuffle(rows)
        assert len(rows) == SPLITS[split], (split, len(rows))

    (HERE / "data").mkdir(exist_ok=True)
    n = 0
    for split in SPLITS:
        with open(HERE / "data" / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as fh:
            for item in splits[split]:
                n += 1
                fh.write(json.dumps({"id": f"shop-{n:04d}", **item}, ensure_ascii=False) + "\n")
        print(f"{split}: {len(splits[split])} questions")


if __name__ == "__main__":
    main()
