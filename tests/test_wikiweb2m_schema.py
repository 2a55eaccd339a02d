"""One WikiWeb2M schema (`processing/wikiweb2m_schema.py`), standard library only, read by the reader and the page
graph alike."""
import ast
import sys
from pathlib import Path

import pytest

from processing import wikiweb2m_schema as schema
from processing.data import wikiweb2m
from processing.page_graph import PageGraph

from .test_wikiweb2m import make_row


def test_schema_module_imports_only_the_standard_library():
    tree = ast.parse(Path(schema.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}


def test_reader_and_page_graph_use_the_same_names():
    assert wikiweb2m.REQUIRED_FEATURES is schema.REQUIRED_FEATURES and wikiweb2m.PAGE_COLUMNS is schema.PAGE_COLUMNS
    assert set(schema.PAGE_GRAPH_FEATURES) <= set(schema.REQUIRED_FEATURES) <= set(schema.PAGE_COLUMNS)


@pytest.mark.parametrize("name", schema.PAGE_GRAPH_FEATURES)
def test_page_graph_requires_exactly_the_schema_graph_features(name):
    row = make_row()
    PageGraph.from_wikiweb2m(row)
    del row[name]
    with pytest.raises(KeyError, match=name):
        PageGraph.from_wikiweb2m(row)
