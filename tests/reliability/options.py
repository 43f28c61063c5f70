"""The reliability suite's command-line option. pytest reads options only from
the conftest files it loads at start-up (the tests root's), so
``tests/conftest.py`` imports this hook."""
from __future__ import annotations


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--long", action="store_true", default=False,
        help="reliability suite: run each fault longer, on both databases, and repeat it",
    )
