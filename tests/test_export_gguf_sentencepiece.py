"""`gritkit export gguf` on a SentencePiece tokenizer (Llama 2, Mistral 7B, GritLM-7B): llama.cpp's
``llama`` vocabulary, which transformers' GGUF reader and llama.cpp tokenise as the source does.

The tokenizer is a tiny SentencePiece BPE model (byte fallback) trained here on generated text, so
no download is needed; the decoder is a tiny random Mistral."""

from __future__ import annotations

import importlib.util
import random
import shutil

import gguf
import pytest
import torch

from gritkit import GritLM
from gritkit.export.gguf import GgufExportError, export_gguf

spm = pytest.importorskip("sentencepiece", reason="sentencepiece trains the test tokenizer (pip install 'gritkit[test]')")

# ASCII, accents, emoji and other characters the model never saw (byte fallback), leading and
# repeated spaces, newlines.
TEXTS = ["The storm hit the coast at night.", "café, naïve and über are in the corpus", "Ünïcödé ß and 東京",
         "emoji 🎉 and 🚀 fall back to bytes", " one leading space", "   three leading spaces", "tabs\tand\nnewlines\n\n",
         "a  double  space", "Paris?", ""]
PROMPTS = ["What is the capital of France?", "Name three colours.", "Write one sentence about the sea."]
INSTRUCTION = "Represent the sentence"
# Mistral's template, so generation runs through a chat template with BOS and [INST] markers.
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                 "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}"
                 "{% endif %}{% endfor %}")


def training_lines(count: int = 600) -> list[str]:
    words = ("the a of to and in is was for on with as by at from that this it be are city river capital France "
             "Paris coast storm night banana yellow long sea colour name write sentence question answer model "
             "three what café naïve über crème brûlée").split()
    rng = random.Random(0)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) + rng.choice(".?!,")
            for _ in range(count)]


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    """A SentencePiece BPE model of 500 pieces with byte fallback, as Llama 2 and Mistral have."""
    path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    with path.open("wb") as model_file:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(training_lines()), model_writer=model_file, model_type="bpe", vocab_size=500,
            byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            remove_extra_whitespaces=False, normalization_rule_name="identity", num_threads=1, minloglevel=2)
    return path


@pytest.fixture(scope="module")
def mistral_dir(sentencepiece_model, tmp_path_factory):
    """A tiny random Mistral with that tokenizer, saved as GritLM-7B is: tokenizer.json and tokenizer.model."""
    from transformers import LlamaTokenizer, MistralConfig, MistralForCausalLM

    directory = tmp_path_factory.mktemp("tiny-spm")
    shutil.copy(sentencepiece_model, directory / "tokenizer.model")
    tokenizer = LlamaTokenizer.from_pretrained(directory, legacy=False, add_prefix_space=True, add_bos_token=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=512, vocab_size=len(tokenizer),
                           sliding_window=None, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def source(mistral_dir) -> GritLM:
    return GritLM.from_pretrained(str(mistral_dir), device="cpu")


@pytest.fixture(scope="module")
def exported(mistral_dir, tmp_path_factory):
    return export_gguf(str(mistral_dir), tmp_path_factory.mktemp("gguf") / "tiny-spm.f32.gguf", dtype="f32")


def source_ids(model: GritLM, text: str) -> list[int]:
    return model.tokenizer(text)["input_ids"]


def test_the_file_holds_llama_cpps_sentencepiece_vocabulary(exported, sentencepiece_model):
    fields = gguf.GGUFReader(exported).fields
    processor = spm.SentencePieceProcessor(model_file=str(sentencepiece_model))
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert fields["tokenizer.ggml.tokens"].contents() == [processor.id_to_piece(i) for i in range(500)]
    assert fields["tokenizer.ggml.scores"].contents() == pytest.approx([processor.get_score(i) for i in range(500)])
    types = fields["tokenizer.ggml.token_type"].contents()
    assert types[:3] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert types[3:259] == [gguf.TokenType.BYTE] * 256 and set(types[259:]) == {gguf.TokenType.NORMAL}
    assert [fields[f"tokenizer.ggml.{key}"].contents() for key in ("unknown_token_id", "bos_token_id", "eos_token_id")] == [0, 1, 2]
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True
    assert fields["tokenizer.ggml.add_eos_token"].contents() is False
    assert fields["tokenizer.ggml.add_space_prefix"].contents() is True
    assert fields["tokenizer.chat_template"].contents() == CHAT_TEMPLATE


def test_the_file_loads_back_with_the_same_tokens_embeddings_and_replies(source, exported, tmp_path, monkeypatch):
    monkeypatch.setenv("GRITKIT_CACHE", str(tmp_path / "cache"))
    loaded = GritLM.from_pretrained(str(exported))
    for text in TEXTS:
        assert source_ids(loaded, text) == source_ids(source, text), text
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        assert loaded.prompt_ids(messages) == source.prompt_ids(messages)
        assert loaded.generate(messages, max_new_tokens=16) == source.generate(messages, max_new_tokens=16)
    texts = [text for text in TEXTS if text]
    cosines = (source.encode(texts, instruction=INSTRUCTION) * loaded.encode(texts, instruction=INSTRUCTION)).sum(1)
    assert cosines.min() >= 0.9999


def test_without_a_sentencepiece_model_scores_come_from_the_merges(mistral_dir, source, exported, tmp_path, monkeypatch):
    """A directory with tokenizer.json only: the merge order gives scores that rank the merged pieces
    as the SentencePiece model's own scores do, so both files tokenise alike."""
    only_json = tmp_path / "only-json"
    shutil.copytree(mistral_dir, only_json, ignore=shutil.ignore_patterns("tokenizer.model"))
    path = export_gguf(str(only_json), tmp_path / "only-json.gguf", dtype="f32")
    from_merges = gguf.GGUFReader(path).fields["tokenizer.ggml.scores"].contents()
    from_model = gguf.GGUFReader(exported).fields["tokenizer.ggml.scores"].contents()
    merged = [index for index, token in enumerate(gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].contents())
              if len(token) > 1 and from_merges[index] > min(from_merges)]
    assert len(merged) > 100
    assert sorted(merged, key=lambda index: -from_merges[index]) == sorted(merged, key=lambda index: -from_model[index])
    monkeypatch.setenv("GRITKIT_CACHE", str(tmp_path / "cache"))
    loaded = GritLM.from_pretrained(str(path))
    for text in TEXTS:
        assert source_ids(loaded, text) == source_ids(source, text), text
    if importlib.util.find_spec("llama_cpp") is not None:
        assert llama_cpp_ids(path) == llama_cpp_ids(exported)


def llama_cpp_ids(path) -> list[list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    return [llm.tokenize(text.encode(), add_bos=True, special=False) for text in TEXTS]


def test_unigram_tokenizers_are_a_clear_error(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from gritkit.export.gguf import _add_hf_tokenizer_metadata

    unigram = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0)))
    writer = gguf.GGUFWriter(tmp_path / "x.gguf", "llama")
    with pytest.raises(GgufExportError, match="SentencePiece BPE with byte fallback.*Unigram"):
        _add_hf_tokenizer_metadata(writer, unigram, vocab_size=2)


needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (optional extra: pip install 'gritkit[llamacpp]', builds from source)",
)


@needs_llama_cpp
def test_llama_cpp_tokenises_as_the_source_does(source, exported, sentencepiece_model):
    """Same ids, except that text opening with a space gets one "▁" more in llama.cpp, as in
    SentencePiece itself: transformers' Metaspace does not add its prefix to text that has one."""
    processor = spm.SentencePieceProcessor(model_file=str(sentencepiece_model))
    for text, ids in zip(TEXTS, llama_cpp_ids(exported)):
        assert ids == [1, *processor.encode(text)], text
        if text.startswith(" "):
            assert ids[:2] == [1, processor.piece_to_id("▁")] and ids[2:] == source_ids(source, text)[1:], text
        else:
            assert ids == source_ids(source, text), text


@needs_llama_cpp
def test_llama_cpp_keeps_a_legacy_tokenizers_prefix_after_special_tokens(mistral_dir, tmp_path):
    """A tokenizer saved with legacy=True puts "▁" after a special token written in the text (the
    chat template's <s>); llama.cpp does the same with the exported file."""
    from transformers import LlamaTokenizer

    legacy_dir = tmp_path / "legacy"
    shutil.copytree(mistral_dir, legacy_dir)
    tokenizer = LlamaTokenizer.from_pretrained(legacy_dir, legacy=True, add_prefix_space=True, add_bos_token=True)
    tokenizer.save_pretrained(legacy_dir)
    source = GritLM.from_pretrained(str(legacy_dir), device="cpu")
    path = export_gguf(str(legacy_dir), tmp_path / "legacy.gguf", dtype="f32")
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        text = source.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = source.prompt_ids(messages)
        assert ids[1] == tokenizer.convert_tokens_to_ids("▁")  # the legacy prefix after <s>
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids


@needs_llama_cpp
def test_llama_cpp_generates_what_gritkit_generates(source, exported):
    from llama_cpp import Llama

    llm = Llama(model_path=str(exported), n_ctx=256, n_threads=1, verbose=False)
    for prompt in PROMPTS:
        ids = source.prompt_ids([{"role": "user", "content": prompt}])
        expected = list(source.generate_ids(ids, max_new_tokens=16))
        produced = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if token == llm.token_eos() or len(produced) == len(expected):
                break
            produced.append(token)
        assert produced == expected, prompt
