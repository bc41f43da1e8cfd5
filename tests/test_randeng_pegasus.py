"""Randeng-Pegasus: its Chinese tokenizer against the published algorithm on real text, the
shipped word vocabulary rebuilt from the shipped corpus, and the tokenizer's round trip through
JSON (corpus manifests, exports)."""

from __future__ import annotations

import jieba
import pytest
from transformers import BertTokenizer

from fs_ray.assets import ASSETS_DIR, DEMO_CORPUS
from fs_ray.data.tokenization import load_tokenizer, special_ids, tokenizer_from_json, tokenizer_json
from fs_ray.families.randeng_pegasus import RENAMED, read_vocab, word_vocabulary

VOCAB = ASSETS_DIR / "vocab" / "pegasus_chinese_vocab.txt"


def published_ids(text: str, vocab_path) -> list[int]:
    """FengShen's PegasusTokenizer, written out plainly: lowercase; jieba words (accurate mode, no
    HMM); a word in the vocabulary is its id, any other word goes through BERT's own (slow,
    pure-Python) basic tokenizer + WordPiece; then </s>."""
    vocab = read_vocab(str(vocab_path))
    bert = BertTokenizer(str(vocab_path), do_lower_case=True, tokenize_chinese_chars=True)
    ids = []
    for word in jieba.cut(text.lower(), HMM=False):
        if word in vocab:
            ids.append(vocab[word])
        else:
            ids.extend(vocab.get(RENAMED.get(t, t), vocab["[UNK]"]) for t in bert.tokenize(word))
    return [*ids, vocab["</s>"]]


def page(n_chars: int = 3000) -> list[str]:
    """About a page of real text: the shipped corpus's documents, mixed Chinese, English, digits."""
    out, size = [], 0
    for line in DEMO_CORPUS.read_text(encoding="utf-8").splitlines()[100:]:
        if line.strip():
            out.append(line)
            size += len(line)
        if size >= n_chars:
            return out
    return out


def test_fast_pegasus_tokenizer_matches_the_published_algorithm_on_a_page_of_real_text():
    tok = load_tokenizer("pegasus-chinese")
    texts = [*page(), "Café au lait，ＡＢＣ全角。\t混合  English words! 2019年12月，价格￥35.5元？"]
    words = 0
    for text in texts:
        enc = tok.encode(text)
        assert enc.ids == published_ids(text, VOCAB), text[:60]
        words += sum(
            1 for t in enc.tokens if len(t) > 1 and not t.startswith(("##", "<", "[")) and t.isalpha()
        )
    assert words > 200  # many multi-character words came out whole, as one id each


def test_the_pegasus_vocabulary_keeps_its_published_special_ids():
    tok = load_tokenizer("pegasus-chinese")
    ids = special_ids(tok)
    # FengShen's renaming of the BERT lines: <pad> 0, </s> 1, <mask_1> 2, <mask_2> 3; [UNK] stays 100
    assert (ids.pad, ids.eos, ids.sentence_mask, tok.token_to_id("<mask_2>"), ids.unk) == (0, 1, 2, 3, 100)
    # Pegasus's packing: nothing opens a sequence, </s> ends a document ([CLS]/[SEP] are plain lines)
    assert ids.seq_start is None and ids.doc_end == 1
    assert [tok.id_to_token(i) for i in ids.sentence_ends] == ["!", "?", "。", "！", "？"]


def test_the_shipped_word_vocabulary_is_rebuilt_from_the_shipped_corpus():
    base = (ASSETS_DIR / "vocab" / "bert_chinese_vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    texts = [t for t in DEMO_CORPUS.read_text(encoding="utf-8").splitlines() if t.strip()]
    shipped = VOCAB.read_text(encoding="utf-8").split("\n")[:-1]
    assert shipped == word_vocabulary(texts, base, len(shipped) - len(base))
    assert len(shipped) - len(base) == 8000


def test_the_tokenizer_survives_its_json_and_falls_back_to_characters_elsewhere():
    from tokenizers import Tokenizer

    tok = load_tokenizer("pegasus-chinese")
    text = "我们喜欢北京的好吃的东西。"
    saved = tokenizer_json(tok)
    assert tokenizer_from_json(saved).encode(text).ids == tok.encode(text).ids
    plain = Tokenizer.from_str(saved)  # a reader that is not fs_ray: characters, never a wrong word
    assert plain.encode(text).tokens == [*text, "</s>"]
    assert tok.encode(text).tokens[:2] == ["我们", "喜欢"]


def test_a_released_pegasus_folder_reads_its_vocab_txt_the_pegasus_way(tmp_path):
    import json
    import shutil

    shutil.copy(VOCAB, tmp_path / "vocab.txt")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "pegasus"}))
    tok = load_tokenizer(str(tmp_path))
    assert tok.encode("我们喜欢").tokens == ["我们", "喜欢", "</s>"]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    bert = load_tokenizer(str(tmp_path)).encode("我们", add_special_tokens=False)
    assert bert.tokens == ["我", "们"]  # a BERT folder: plain WordPiece


def test_a_vocabulary_without_the_pegasus_tokens_is_refused(tmp_path):
    from fs_ray.families.randeng_pegasus import pegasus_tokenizer

    (tmp_path / "vocab.txt").write_text("[UNK]\n我\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks <pad>, </s>, <mask_1>, <mask_2>"):
        pegasus_tokenizer(str(tmp_path / "vocab.txt"))
