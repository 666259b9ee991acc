"""AF2's tokenizer: the Qwen2.5 tokenizer from `lm/` plus AF2's special tokens, as the official
code adds them (`<audio>`, `<|endofchunk|>`, `<|PAD_TOKEN|>`, then `<SEP>`), no BOS."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

MEDIA, EOC, PAD, SEP, EOS = "<audio>", "<|endofchunk|>", "<|PAD_TOKEN|>", "<SEP>", "<|endoftext|>"


class AF2Tokenizer:
    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        tok.add_special_tokens([MEDIA, EOC, PAD])
        if tok.token_to_id(SEP) is None:
            tok.add_special_tokens([SEP])
        ids = {t: tok.token_to_id(t) for t in (MEDIA, EOC, PAD, SEP, EOS)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks {', '.join(missing)}")
        found = {t: i for t, i in ids.items() if i is not None}  # every one, after the check
        self.media_id, self.eoc_id, self.pad_id = found[MEDIA], found[EOC], found[PAD]
        self.sep_id, self.eos_id = found[SEP], found[EOS]

    @classmethod
    def from_dir(cls, lm_dir: str | Path) -> AF2Tokenizer:
        path = Path(lm_dir) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing tokenizer file (copy tokenizer.json of the matching Qwen2.5 model "
                f"into {Path(lm_dir)}, or run `flamingo-edge model fetch`)"
            )
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path}: not a valid tokenizer file ({e})") from e

    def __len__(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    @staticmethod
    def prompt(question: str) -> str:
        return f"{MEDIA}{question.lower().strip()}{SEP}"

    def encode_prompt(self, question: str) -> list[int]:
        return self.tok.encode(self.prompt(question), add_special_tokens=False).ids

    def encode_text(self, text: str) -> list[int]:
        """Plain text (an answer option) as it would follow <SEP>: no special tokens added."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def answer_text(self, prompt_ids: list[int], answer_ids: list[int]) -> str:
        """Official decoding: text after the last <SEP>, EOS/pad/<|endofchunk|> removed."""
        text = self.tok.decode(list(prompt_ids) + list(answer_ids), skip_special_tokens=False)
        text = text.split(SEP)[-1]
        for t in (EOS, PAD, EOC):
            text = text.replace(t, "")
        return text
