"""Text corpora for calibration and perplexity, offline by default.

Offline names (files shipped with gensim's test data):

* ``wiki-calib`` / ``wiki-val`` / ``wiki-test``: the English Wikipedia excerpt
  ``enwiki-latest-pages-articles1...shortened.bz2`` (106 articles after dropping redirects and empty
  pages), wiki markup removed with gensim's ``filter_wiki`` plus a light clean-up (bold/italic quotes,
  heading markers, empty brackets), case preserved. Articles are split by a hash of their title:
  ``sha1(title) mod 100`` < 70 → calibration, < 80 → validation, else test. Deterministic and
  disjoint by article; articles are joined with blank lines.
* ``news``: gensim's Lee background corpus (``lee_background.cor``, 300 Australian news stories),
  a second domain; one story per line, joined with blank lines.

Also: any local text file path (UTF-8), and the Hugging Face datasets peers use (needs network and
``pip install datasets``; real code, not tested offline): ``wikitext2`` (wikitext-2-raw-v1 test,
lines joined with blank lines), ``wikitext2-train``, ``c4`` (the first 1100 documents of the
en validation shard 0, joined with spaces), ``c4-train`` (train shard 0).
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import importlib.util
import logging
import re
from pathlib import Path

from iobs.models.cache import cache_dir
from iobs.utils import atomic_write_text

logger = logging.getLogger(__name__)

CORPORA: dict[str, str] = {
    "wiki-calib": "Wikipedia excerpt (gensim test data), calibration split: ~70% of articles by title hash",
    "wiki-val": "Wikipedia excerpt (gensim test data), validation split: ~10% of articles by title hash",
    "wiki-test": "Wikipedia excerpt (gensim test data), test split: ~20% of articles by title hash",
    "news": "Lee background news corpus (gensim test data), 300 Australian news stories",
    "wikitext2": "WikiText-2 raw test split (Hugging Face datasets; needs network)",
    "wikitext2-train": "WikiText-2 raw train split (Hugging Face datasets; needs network)",
    "c4": "C4 en validation shard 0, first 1100 documents (Hugging Face datasets; needs network)",
    "c4-train": "C4 en train shard 0 (Hugging Face datasets; needs network)",
}

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_FILE = "lee_background.cor"
WIKI_SPLITS = {"calib": (0, 70), "val": (70, 80), "test": (80, 100)}
# bump when the text preparation changes so the cached files are rebuilt
_PREP_VERSION = 1


def gensim_test_data(filename: str) -> Path:
    """Path of a file in gensim's test data folder, found without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "test" / "test_data" / filename
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"{filename} from gensim's test data is needed but gensim is not installed; "
        "install it with `pip install gensim==4.4.0` (or run scripts/setup.sh)"
    )


def split_of(title: str) -> str:
    """Which wiki split an article belongs to: ``sha1(title) mod 100`` against WIKI_SPLITS."""
    bucket = int(hashlib.sha1(title.encode("utf-8")).hexdigest(), 16) % 100
    for name, (lo, hi) in WIKI_SPLITS.items():
        if lo <= bucket < hi:
            return name
    raise AssertionError(bucket)


_EMPTY_BRACKETS = re.compile(r"\(\s*[,;]?(\s*[,;]\s*)*\s*\)")
_HEADING = re.compile(r"^\s*(=+)\s*(.*?)\s*\1\s*$", re.M)


def clean_wiki(markup: str) -> str:
    """Wiki markup → readable prose: gensim's ``filter_wiki``, then quotes, headings and blank runs."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(markup)
    text = text.replace("'''", "").replace("''", "")
    text = _HEADING.sub(lambda m: m.group(2), text)
    text = _EMPTY_BRACKETS.sub("", text)
    text = re.sub(r"\(\s*(?:[,;]\s*)+", "(", text)  # "(;, Akhilleus, )" -> "(Akhilleus)"
    text = re.sub(r"(?:\s*[,;])+\s*\)", ")", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r" +([,.;:])", r"\1", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def wiki_articles() -> list[tuple[str, str]]:
    """``(title, clean text)`` of every real article in the excerpt (redirects and empty pages dropped)."""
    from gensim.corpora.wikicorpus import extract_pages

    path = gensim_test_data(WIKI_FILE)
    out = []
    with bz2.open(path, "rb") as f:
        for title, markup, _pageid in extract_pages(f, filter_namespaces=("0",)):
            if not markup.strip() or markup.lstrip().upper().startswith("#REDIRECT"):
                continue
            text = clean_wiki(markup)
            if text:
                out.append((title, text))
    return out


def _wiki_split(split: str) -> str:
    src = gensim_test_data(WIKI_FILE)
    key = hashlib.sha1(f"{src.stat().st_size}:{_PREP_VERSION}".encode()).hexdigest()[:10]
    path = cache_dir("text") / f"wiki-{split}-{key}.txt"
    if not path.is_file():
        logger.info("preparing the Wikipedia excerpt splits (one-time, a few seconds)")
        parts: dict[str, list[str]] = {name: [] for name in WIKI_SPLITS}
        for title, text in wiki_articles():
            parts[split_of(title)].append(text)
        for name, texts in parts.items():
            atomic_write_text(cache_dir("text") / f"wiki-{name}-{key}.txt", "\n\n".join(texts) + "\n")
    return path.read_text(encoding="utf-8")


def _news() -> str:
    lines = gensim_test_data(NEWS_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n\n".join(line.strip() for line in lines if line.strip()) + "\n"


def _hf_load(name: str, *args, **kwargs):
    """``datasets.load_dataset(*args, **kwargs)`` with clear errors (network + ``datasets``)."""
    try:
        from datasets import load_dataset
    except ModuleNotFoundError:
        raise ValueError(
            f"text {name!r} comes from Hugging Face datasets: "
            "`pip install datasets` and network access are needed"
        ) from None
    try:
        return load_dataset(*args, **kwargs)
    except (OSError, ConnectionError) as e:
        raise ValueError(f"could not download text {name!r} (needs network access): {e}") from e


def _hf_dataset(name: str) -> str:
    """The peers' protocol for WikiText-2 and C4 (network + ``datasets``; untested offline)."""
    if name in ("wikitext2", "wikitext2-train"):
        split = "test" if name == "wikitext2" else "train"
        return "\n\n".join(_hf_load(name, "wikitext", "wikitext-2-raw-v1", split=split)["text"])
    if name == "c4":
        files = {"validation": "en/c4-validation.00000-of-00008.json.gz"}
        return " ".join(_hf_load(name, "allenai/c4", data_files=files, split="validation")[:1100]["text"])
    return "\n\n".join(c4_train_documents())


@functools.lru_cache(maxsize=1)
def c4_train_documents() -> list[str]:
    """Documents of the C4 en train shard 0, the peers' calibration source (network; untested offline)."""
    files = {"train": "en/c4-train.00000-of-01024.json.gz"}
    return list(_hf_load("c4-train", "allenai/c4", data_files=files, split="train")["text"])


@functools.lru_cache(maxsize=16)
def _load_named(name: str) -> str:
    if name.startswith("wiki-"):
        return _wiki_split({"wiki-calib": "calib", "wiki-val": "val", "wiki-test": "test"}[name])
    if name == "news":
        return _news()
    return _hf_dataset(name)


def load_text(name: str) -> str:
    """Text of a named corpus (see ``CORPORA``) or of a local UTF-8 text file."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"text name must be a non-empty string, got {name!r}")
    if name in CORPORA:
        text = _load_named(name)
    else:
        path = Path(name).expanduser()
        try:
            is_file, exists = path.is_file(), path.exists()
        except OSError:  # e.g. a name too long to be a path
            is_file = exists = False
        if is_file:
            text = path.read_text(encoding="utf-8", errors="replace")
        elif exists:
            raise ValueError(f"text path {name!r} is not a file")
        else:
            known = ", ".join(CORPORA)
            raise ValueError(f"unknown text {name!r}: not a file and not a known corpus ({known})")
    if not text.strip():
        raise ValueError(f"text {name!r} is empty")
    return text
