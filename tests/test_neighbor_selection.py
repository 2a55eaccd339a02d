"""The one neighbour selection (`processing.neighbor_selection`): per-section candidate orders, the
summary-leak check, and the collector of what an embedding cache must hold."""
import pytest

from processing.data.sample_data import make_page
from processing.neighbor_selection import collect_neighbor_inputs, neighbor_order, select_neighbors, summary_free
from processing.page_graph import PageGraph
from tests.test_page_graph import plain_page


def test_neighbor_order_is_the_documented_walk():
    graph = PageGraph.from_wikiweb2m(make_page(3).row)
    for t in range(graph.num_sections):
        order = neighbor_order(graph, t)
        parent = graph.section_parents[t]
        others = sorted((s for s in range(graph.num_sections) if s not in (t, parent)), key=lambda s: (abs(s - t), s))
        assert list(order.ranking) == ([parent] if parent >= 0 else []) + others
        usable = lambda node: bool(graph.nodes[node].text.strip())  # noqa: E731
        expected = [0] if usable(0) else []
        expected += [n for n in graph.image_nodes[t] if usable(n)]
        for s in order.ranking:
            node = graph.section_nodes[s]
            expected += ([node] if usable(node) else []) + [n for n in graph.image_nodes[s] if usable(n)]
        assert order.text_nodes == tuple(expected)
        assert order.texts == tuple(graph.nodes[n].text for n in expected)
        assert order.image_nodes == tuple(n for s in [t, *order.ranking] for n in graph.image_nodes[s])
        assert order.image_refs == tuple(graph.nodes[n].image for n in order.image_nodes)
        assert neighbor_order(graph, t) is order  # built once per section
    with pytest.raises(IndexError, match="section index 99"):
        neighbor_order(graph, 99)


def test_summary_free_prefixes():
    graph = PageGraph.from_dict(plain_page())
    summary = graph.summaries[1]  # "Four."
    graph.nodes[graph.section_nodes[2]].text = f"Six. {summary}"  # section 2 repeats section 1's summary
    texts = neighbor_order(graph, 1).texts
    leak = next(i for i, text in enumerate(texts) if summary in text)
    assert summary_free(graph, 1, leak) and not summary_free(graph, 1, leak + 1)
    assert summary_free(graph, 1, 0) and not summary_free(graph, 1, 99)
    assert all(summary_free(graph, 0, n) for n in (1, 5, 99))




def test_collector_gives_exactly_what_each_design_asks_for(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not decoded here")
    page = plain_page(images=[{"path": "a.png", "caption": "A caption."}, {"path": "absent.png", "caption": "Gone."}])
    graph = PageGraph.from_dict(page)
    for context, encoding in [("all", "sa_e"), ("text_only", "ca_e"), ("all", "sa_te"), ("section_all", "sa_e"),
                              ("section_only", "sa_e")]:
        inputs = collect_neighbor_inputs([(graph, 1), (graph, 2)], context, encoding, 11, 5, tmp_path)
        expected_texts = {} if encoding == "sa_te" or context == "section_only" else {
            text: None for s in (1, 2) for text in select_neighbors(graph, s, context, 11, 5).texts}
        assert inputs.texts == list(expected_texts), (context, encoding)
        has_images = context in ("all", "section_all")
        # Sections 1 and 2 see section 0's images only with context "all"; section_all sees the target's own (none).
        assert inputs.image_files == ([str(tmp_path / "a.png")] if context == "all" else []), (context, encoding)
        assert inputs.missing_images == (2 if context == "all" else 0)
        assert has_images or not inputs.image_files


def test_duplicated_neighbour_texts_are_dropped_and_counted():
    # The description repeats inside section A's text (as lead sections do); C repeats B; a caption equals
    # text in the target section D's own input.
    page = {
        "title": "T",
        "description": "Alpha is a town.",
        "sections": [
            {"title": "A", "text": "Intro. Alpha is a town. It is old."},
            {"title": "B", "text": "Bravo. Bravo rest."},
            {"title": "C", "text": "Bravo. Bravo rest.", "parent": 0},
            {"title": "D", "text": "Delta one. Delta rest here.", "images": [{"path": "d.png", "caption": "Delta rest here."}]},
            {"title": "E", "text": "Echo. Echo rest."},
        ],
    }
    graph = PageGraph.from_dict(page)
    selection = select_neighbors(graph, 3, "text_only", max_text_neighbors=4, max_image_neighbors=0)
    texts = selection.texts
    assert "Alpha is a town." not in texts and "Intro. Alpha is a town. It is old." in texts  # inside A's text
    assert texts.count("Bravo. Bravo rest.") == 1  # repeated by C
    assert "Delta rest here." not in texts  # inside the target input
    # Freed slots go to the next candidates: all five usable sections / texts are reached, three kept.
    assert sorted(texts) == ["Bravo. Bravo rest.", "Echo. Echo rest.", "Intro. Alpha is a town. It is old."]
    assert len(set(texts)) == len(texts) and not any(a in b for a in texts for b in texts if a is not b)
    assert graph.memo["duplicates_dropped"][(3, "text_only", 4)] == 3
    # Without duplicates, nothing changes and nothing is counted.
    clean = PageGraph.from_dict(plain_page())
    assert select_neighbors(clean, 1, "text_only", 11, 0).texts == ["D", "One. Two three.", "Six. Seven."]
    assert clean.memo["duplicates_dropped"][(1, "text_only", 11)] == 0


def test_duplicate_rule_does_not_depend_on_the_title_prefix():
    # A caption equal to the target's title: the processor may or may not prefix the title (include_section_title),
    # so the rule compares with the target's text alone and keeps the caption either way; the cache builder and
    # every processor thus select the same neighbours.
    page = {
        "title": "T",
        "description": "Page.",
        "sections": [
            {"title": "Harbour", "text": "Ships come. Boats go.", "images": [{"path": "h.png", "caption": "Harbour"}]},
            {"title": "Town", "text": "Houses stand. Streets run.", "images": [{"path": "t.png", "caption": "Boats go."}]},
        ],
    }
    graph = PageGraph.from_dict(page)
    texts = select_neighbors(graph, 0, "all", max_text_neighbors=11, max_image_neighbors=5).texts
    assert "Harbour" in texts  # equal to the title, not in the target's text
    assert "Boats go." not in texts  # inside the target's text
