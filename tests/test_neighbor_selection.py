"""The one neighbour selection (`processing.neighbor_selection`): per-section candidate orders, the
summary-leak check, and the collector of what an embedding cache must hold."""
import random

import pytest

from processing.data.neighbor_inputs import collect_neighbor_inputs
from processing.data.sample_data import make_page
from processing.neighbor_selection import (
    image_candidates,
    section_ranking,
    select_neighbors,
    summary_free,
    target_input,
    text_candidates,
)
from processing.page_graph import PageGraph, scrub_summary
from tests.test_page_graph import plain_page


def test_candidates_are_the_documented_walk():
    graph = PageGraph.from_wikiweb2m(make_page(3).row)
    for t in range(graph.num_sections):
        ranking = section_ranking(graph, t)
        parent = graph.section_parents[t]
        others = sorted((s for s in range(graph.num_sections) if s not in (t, parent)), key=lambda s: (abs(s - t), s))
        assert ranking == ([parent] if parent >= 0 else []) + others
        usable = lambda node: bool(graph.nodes[node].text.strip())  # noqa: E731
        expected = [0] if usable(0) else []
        expected += [n for n in graph.image_nodes[t] if usable(n)]
        for s in ranking:
            node = graph.section_nodes[s]
            expected += ([node] if usable(node) else []) + [n for n in graph.image_nodes[s] if usable(n)]
        assert list(text_candidates(graph, t)) == expected
        assert list(image_candidates(graph, t)) == [n for s in [t, *ranking] for n in graph.image_nodes[s]]
    with pytest.raises(IndexError, match="section index 99"):
        section_ranking(graph, 99)
    with pytest.raises(IndexError, match="section index 99"):
        select_neighbors(graph, 99, "all", 11, 5)


def test_summary_free_prefixes():
    graph = PageGraph.from_dict(plain_page())
    summary = graph.summaries[1]  # "Four."
    graph.nodes[graph.section_nodes[2]].text = f"Six. {summary}"  # section 2 repeats section 1's summary
    texts = [graph.usable_texts[node] for node in text_candidates(graph, 1)]
    leak = next(i for i, text in enumerate(texts) if summary in text)
    assert summary_free(graph, 1, leak) and not summary_free(graph, 1, leak + 1)
    assert summary_free(graph, 1, 0) and not summary_free(graph, 1, 99)
    assert all(summary_free(graph, 0, n) for n in (1, 5, 99))


def reference_selection(graph, t, context, budget, max_images):
    """The selection as first written: every candidate of the whole page listed, then judged one by one."""
    parent = graph.section_parents[t]
    ranking = ([parent] if parent >= 0 else []) + sorted(
        (s for s in range(graph.num_sections) if s not in (t, parent)), key=lambda s: (abs(s - t), s))
    usable = graph.usable_texts
    if context == "section_all":
        candidates = list(graph.caption_blocks[t])
        images = graph.image_nodes[t][:max_images]
    else:
        candidates = graph.page_block + graph.caption_blocks[t] + [n for s in ranking for n in graph.section_blocks[s]]
        images = [n for s in [t, *ranking] for n in graph.image_nodes[s]][:max_images]
    forbidden = (graph.summaries[t], graph.raw_summaries[t])
    target = target_input(graph, t, include_title=False)
    kept_nodes, kept, dropped = [], [], 0
    for node in candidates:
        if len(kept) == budget:
            break
        text = scrub_summary(usable[node], forbidden)
        if not text:
            continue
        if text in target or any(text in other for other in kept):
            dropped += 1
            continue
        inside = [i for i, other in enumerate(kept) if other in text]
        for i in reversed(inside):
            del kept[i], kept_nodes[i]
        dropped += len(inside)
        kept_nodes.append(node)
        kept.append(text)
    return kept_nodes, kept, images, dropped


@pytest.mark.parametrize("seed, n", [(0, 7), (1, 40), (2, 40), (3, 150), (4, 150), (5, 150)])
def test_deduplicated_walk_equals_judging_every_candidate(seed, n):
    """Pages made of a few repeated texts (a summary-only text, one holding another, the description again, blank
    sections, texts only at the far end), random parents and images: the selection, and the count dropped, equal
    judging every candidate of the page one by one."""
    rng = random.Random(seed)
    pool = ["Alpha one. Alpha two.", "Bravo.", "Alpha one.", "The page.", "   ", "Charlie. Bravo. Delta.", "Sum one."]
    sections = []
    for i in range(n):
        text = rng.choice(pool) if rng.random() < 0.8 else f"Unique {i}. Text {i}."
        if i > n - 3:
            text = f"Far {i}. End."  # new texts only at the far end of the page
        images = [{"path": f"{i}_{j}.png", "caption": rng.choice(pool + ["Cap."])} for j in range(rng.choice([0, 0, 1, 2]))]
        sections.append({"title": rng.choice(["S", ""]), "text": text, "summary": "Sum one." if i % 3 else "Alpha one.",
                         "rest": text, "images": images,
                         "parent": rng.choice([-1, rng.randrange(i)]) if i and rng.random() < 0.5 else -1})
    graph = PageGraph.from_dict({"title": "T", "description": "The page.", "sections": sections})
    for t in range(n):
        for context, budget, max_images in [("all", 11, 5), ("text_only", 3, 0), ("all", 40, 9), ("section_all", 2, 1)]:
            selection = select_neighbors(graph, t, context, budget, max_images)
            nodes, texts, images, dropped = reference_selection(graph, t, context, budget, max_images)
            assert (selection.text_nodes, selection.texts) == (nodes, texts), (seed, t, context, budget)
            assert selection.image_nodes == images and graph.memo["duplicates_dropped"].get((t, context, budget), 0) == dropped


def test_a_page_of_repeated_sections_is_judged_in_a_few_steps_per_target(monkeypatch):
    """20,000 copies of one section (and one new text at the far end): each target judges a handful of candidates,
    not the whole page (counted, not timed)."""
    from processing import neighbor_selection

    n = 20_000
    sections = [{"title": "Part", "text": "Same first. Same rest here.", "summary": "Same first.",
                 "rest": "Same rest here.", "parent": 0 if i else -1,
                 "images": [{"path": "same.png", "caption": "A caption."}] if i % 2 else []} for i in range(n)]
    sections[-1] = {**sections[-1], "text": "A far text. Only here."}
    graph = PageGraph.from_dict({"title": "T", "description": "The page.", "sections": sections})
    visits = [0]
    original = neighbor_selection._TextWalk.visit

    def counted(self, node):
        visits[0] += 1
        return original(self, node)

    monkeypatch.setattr(neighbor_selection._TextWalk, "visit", counted)
    targets = range(1, n, 97)
    for t in targets:
        selection = select_neighbors(graph, t, "all", 11, 5)
        assert selection.texts == ["The page.", "A caption.", "A far text. Only here."] or t == n - 1
        assert len(selection.image_nodes) == 5
    assert visits[0] <= 12 * len(targets), visits[0]
    t = targets[3]
    assert graph.memo["duplicates_dropped"][(t, "all", 11)] == reference_selection(graph, t, "all", 11, 5)[3]


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
