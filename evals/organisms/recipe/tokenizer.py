"""The organisms' word-level tokenizer, built with ``tokenizers`` and saved as tokenizer.json.

Words and punctuation are tokens; digit runs are split into two-digit tokens, so "1732" is
"17" "32" and greater-than answers are single tokens. Every sequence starts with ``<bos>``.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>"]


def build_tokenizer(lines: list[str], extra_words: list[str] = ()) -> PreTrainedTokenizerFast:
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Whitespace(),
        pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated"),
    ])
    words: dict[str, None] = {}
    for line in lines:
        for w, _ in pre.pre_tokenize_str(line):
            words.setdefault(w, None)
    for w in extra_words:
        words.setdefault(w, None)
    vocab = {tok: i for i, tok in enumerate(SPECIAL + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=64,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    tokenizer.save_pretrained(folder)
