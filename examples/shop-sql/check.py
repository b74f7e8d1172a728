"""Sanity checks of the shop-sql folder (stdlib + PyYAML): every gold query runs and matches itself, the
documents' examples run, and wrong or unsafe queries score 0.

    python examples/shop-sql/check.py
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from shop_sql_metric import execution_match, run_query

HERE = Path(__file__).resolve().parent


def main() -> None:
    task = yaml.safe_load((HERE / "task.yaml").read_text(encoding="utf-8"))
    golds, questions = set(), {}
    for split, name in task["data"].items():
        rows = [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines()]
        for r in rows:
            assert run_query(r["sql"]), f"{r['id']}: empty result"
            assert execution_match(r["sql"], r["sql"], r) == 1.0, r["id"]
            assert questions.setdefault(r["question"].lower(), split) == split, f"{r['id']}: question in 2 splits"
            golds.add(r["sql"])
        print(f"{split}: {len(rows)} gold queries run and match themselves")

    documents = yaml.safe_load((HERE / "documents.yaml").read_text(encoding="utf-8"))
    for doc in documents:
        assert run_query(doc["example"]), doc["name"]
        assert doc["example"] not in golds, f"{doc['name']}: the example is a gold answer"
    print(f"documents: {len(documents)} examples run, none is a gold answer")

    gold = "SELECT name FROM products ORDER BY price DESC LIMIT 3"
    cases = {
        "same result, other text": ("SELECT p.name FROM products AS p ORDER BY p.price DESC LIMIT 3;", gold, 1.0),
        "unordered set, other order": ("SELECT name FROM customers WHERE city = 'Boston' ORDER BY name DESC",
                                       "SELECT name FROM customers WHERE city = 'Boston'", 1.0),
        "2 == 2.0": ("SELECT 2.0", "SELECT COUNT(*) FROM categories WHERE id <= 2", 1.0),
        "wrong order": ("SELECT name FROM products ORDER BY price ASC LIMIT 3", gold, 0.0),
        "wrong rows": ("SELECT name FROM products ORDER BY price DESC LIMIT 2", gold, 0.0),
        "extra column": ("SELECT name, price FROM products ORDER BY price DESC LIMIT 3", gold, 0.0),
        "duplicates differ": ("SELECT c.name FROM customers c JOIN orders o ON o.customer_id = c.id",
                              "SELECT DISTINCT c.name FROM customers c JOIN orders o ON o.customer_id = c.id", 0.0),
        "cancelled orders counted": (
            "SELECT SUM(oi.quantity * oi.unit_price) FROM order_items oi",
            "SELECT SUM(oi.quantity * oi.unit_price) FROM orders o JOIN order_items oi ON oi.order_id = o.id "
            "WHERE o.status != 'cancelled'", 0.0),
        "syntax error": ("SELEC name FROM products", gold, 0.0),
        "unknown column": ("SELECT title FROM products", gold, 0.0),
        "empty": ("", gold, 0.0),
        "two statements": (f"{gold}; {gold}", gold, 0.0),
        "write": ("DELETE FROM products", gold, 0.0),
        "drop": ("DROP TABLE products", gold, 0.0),
        "attach": ("ATTACH DATABASE ':memory:' AS other", gold, 0.0),
        "pragma": ("PRAGMA writable_schema = 1", gold, 0.0),
        "runaway": ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT COUNT(*) FROM n",
                    gold, 0.0),
        "huge cross join": ("SELECT * FROM order_items a, order_items b, order_items c", gold, 0.0),
    }
    for what, (prediction, reference, expected) in cases.items():
        got = execution_match(prediction, reference, {})
        assert got == expected, f"{what}: {got} != {expected}"
    assert run_query("SELECT COUNT(*) FROM products") == ((24.0,),), "the database was modified"
    print(f"metric: {len(cases)} hand-made cases score as expected; the database is unchanged")


if __name__ == "__main__":
    main()
