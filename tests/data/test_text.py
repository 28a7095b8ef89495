"""Offline corpora: the Wikipedia excerpt split by article (disjoint, deterministic, non-empty), Lee news."""

import os
import re
import subprocess
import sys

import pytest

from iobs.data import text as T


@pytest.fixture(scope="module")
def articles():
    return T.wiki_articles()


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IOBS_CACHE", str(tmp_path))
    T._load_named.cache_clear()
    yield tmp_path
    T._load_named.cache_clear()


def test_articles_are_readable_prose(articles):
    assert len(articles) > 100
    titles = [t for t, _ in articles]
    assert len(set(titles)) == len(titles)
    for title, body in articles:
        assert body.strip(), title
        assert not body.upper().startswith("#REDIRECT"), title
        for markup in ("[[", "]]", "{{", "}}", "'''", "<ref"):
            assert markup not in body, (title, markup)
        assert not re.search(r"^=+.*=+\s*$", body, re.M), title  # heading markers removed
    joined = " ".join(b for _, b in articles)
    assert "Aristotle" in joined and "aardvark" in joined  # case preserved


def test_splits_are_disjoint_by_article_and_match_the_title_hash(articles, fresh_cache, monkeypatch):
    monkeypatch.setattr(T, "wiki_articles", lambda: articles)  # parsed once by the fixture
    by_split = {name: [b for t, b in articles if T.split_of(t) == name] for name in T.WIKI_SPLITS}
    assert all(by_split.values())  # every split non-empty
    n = len(articles)
    assert 0.55 * n < len(by_split["calib"]) < 0.85 * n and len(by_split["test"]) > 0.1 * n
    for name in T.WIKI_SPLITS:
        got = T.load_text(f"wiki-{name}")
        assert got == "\n\n".join(by_split[name]) + "\n"
        for other, bodies in by_split.items():
            if other != name:  # no article of another split appears in this one
                assert not any(b in got for b in bodies if len(b) > 200), (name, other)
    files = sorted((fresh_cache / "text").glob("wiki-*.txt"))
    assert len(files) == 3
    T._load_named.cache_clear()
    for f in files:
        f.write_text("cached copy")  # later loads read the cache instead of re-parsing
    assert T.load_text("wiki-val") == "cached copy"


def test_split_does_not_depend_on_the_process_hash_seed(articles):
    titles = [t for t, _ in articles]
    code = "import sys; from iobs.data.text import split_of; print(','.join(map(split_of, sys.argv[1:])))"
    env = {**os.environ, "PYTHONHASHSEED": str(hash("x") % 1000 + 1)}  # differs from this process's
    res = subprocess.run([sys.executable, "-c", code, *titles], env=env, capture_output=True, text=True)
    assert res.stdout.strip() == ",".join(T.split_of(t) for t in titles)


def test_news_has_one_paragraph_per_story():
    news = T.load_text("news")
    lines = [ln for ln in T.gensim_test_data(T.NEWS_FILE).read_text().splitlines() if ln.strip()]
    assert len(news.strip().split("\n\n")) == len(lines) > 250
    assert "New South Wales" in news


def test_local_file_and_errors(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("hello world\n")
    assert T.load_text(str(p)) == "hello world\n"
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        T.load_text(str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match="unknown text 'wiki-tset'.*wiki-test"):
        T.load_text("wiki-tset")
    with pytest.raises(ValueError, match="not a file"):
        T.load_text(str(tmp_path))
    with pytest.raises(TypeError):
        T.load_text(None)
