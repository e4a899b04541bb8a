"""The tree-sitter repository index: symbols, docstrings, callers, test links, ranking, languages, cache."""

from __future__ import annotations

import pytest

from agent.index import ParseCache, RepoIndex, is_test_file, parse_file

FILES = {
    "shop/cart.py": '''"""Shopping cart."""
from shop.prices import price_of


class Cart:
    """Items a customer intends to buy."""

    def __init__(self):
        self.items = []

    def add(self, sku, qty=1):
        """Add ``qty`` of ``sku``."""
        self.items.append((sku, qty))

    def total(self):
        return sum(price_of(sku) * qty for sku, qty in self.items)
''',
    "shop/prices.py": '''PRICES = {"apple": 3}


def price_of(sku):
    """Unit price in cents."""
    return PRICES[sku]


def discounted(sku, pct):
    return price_of(sku) * (100 - pct) // 100
''',
    "tests/test_cart.py": '''from shop.cart import Cart
from shop.prices import price_of


def test_price():
    assert price_of("apple") == 3


def test_total():
    cart = Cart()
    cart.add("apple", 2)
    assert cart.total() == 6
''',
    "web/app.js": "class Server { start() { listen(8080); } }\nfunction listen(port) { return port; }\n",
    "web/api.ts": "interface Api { get(): string }\nexport function fetchAll(): number { return helper(); }\nconst helper = () => 1;\n",
    "svc/main.go": "package main\n\ntype Store struct{}\n\nfunc (s *Store) Get() int { return compute() }\n\nfunc compute() int { return 1 }\n",
    "core/lib.rs": "pub struct Engine;\nimpl Engine { pub fn run(&self) -> u32 { step() } }\nfn step() -> u32 { 1 }\n",
    "app/Main.java": "class Main { void go() { helper(); } static void helper() {} }\n",
    "broken.py": "def ok():\n    return 1\n\ndef broken(:\n",
    "README.md": "# not code\n",
}


@pytest.fixture(scope="module")
def index() -> RepoIndex:
    return RepoIndex.build(FILES.items())


def test_python_symbols_have_kinds_spans_signatures_and_docstrings(index):
    add = index.definitions("Cart.add")[0]
    assert (add.kind, add.parent, add.path, add.start_line, add.end_line) == ("method", "Cart", "shop/cart.py", 11, 13)
    assert add.signature == "def add(self, sku, qty=1)"
    assert add.doc == "Add ``qty`` of ``sku``."
    assert add.body_start_line == 13  # the line after the docstring
    cart = index.definitions("Cart")[0]
    assert cart.kind == "class" and cart.doc == "Items a customer intends to buy."
    assert index.files["shop/cart.py"].imports == ["from shop.prices import price_of"]


def test_callers_callees_and_tests_are_linked(index):
    price_of = index.definitions("price_of")[0]
    assert {s.qualname for s in index.callers(price_of)} == {"Cart.total", "discounted", "test_price"}
    total = index.definitions("Cart.total")[0]
    assert [s.name for s in index.callees(total)] == ["price_of"]
    assert index.tests_for(index.definitions("Cart.add")[0]) == ["tests/test_cart.py"]
    assert is_test_file("tests/test_cart.py") and is_test_file("pkg/x_test.go") and not is_test_file("shop/cart.py")


@pytest.mark.parametrize("name, path", [("Server", "web/app.js"), ("listen", "web/app.js"), ("Api", "web/api.ts"),
                                        ("helper", "web/api.ts"), ("Store", "svc/main.go"), ("Get", "svc/main.go"),
                                        ("Engine", "core/lib.rs"), ("step", "core/lib.rs"), ("Main", "app/Main.java"),
                                        ("helper", "app/Main.java")])
def test_other_languages_go_through_the_same_interface(index, name, path):
    assert path in {s.path for s in index.definitions(name)}


def test_call_references_are_found_in_other_languages(index):
    assert {r.path for r in index.references("compute")} == {"svc/main.go"}
    assert {r.path for r in index.references("step")} == {"core/lib.rs"}


def test_the_most_referenced_symbols_come_first_and_the_map_fits_the_budget(index):
    assert index.ranked_symbols()[0].name == "price_of"
    small = index.repo_map(budget_tokens=40)
    assert small.splitlines()[0] == "shop/prices.py:"
    assert len(small) // 4 <= 40
    assert "def price_of(sku)" in small
    assert len(index.repo_map(budget_tokens=10_000)) > len(small)


def test_code_with_syntax_errors_is_indexed_as_far_as_it_parses(index):
    broken = index.files["broken.py"]
    assert broken.error and "ok" in [s.name for s in broken.symbols]
    assert parse_file("README.md", "# x") is None


def test_parse_cache_reuses_results_in_memory_and_on_disk(tmp_path):
    cache = ParseCache(tmp_path)
    RepoIndex.build(FILES.items(), cache)
    parsed = cache.misses
    assert parsed == sum(1 for p in FILES if not p.endswith(".md")) + 1  # README is looked at, not indexed
    fresh = ParseCache(tmp_path)  # a new process: everything from disk
    again = RepoIndex.build(FILES.items(), fresh)
    assert fresh.misses == 0 and fresh.hits == parsed
    assert again.definitions("Cart.add")[0].doc == "Add ``qty`` of ``sku``."
    changed = dict(FILES, **{"shop/prices.py": FILES["shop/prices.py"] + "\n\ndef tax(x):\n    return x\n"})
    RepoIndex.build(changed.items(), fresh)
    assert fresh.misses == 1
