"""NoteLLM's prompt templates, tokenised segment by segment so that every position is known.

Served and trained alike: the `embed` model builds the [EMB] prompt with the tokenizer export saved
(llmrec.server.tokenizer), training builds the same prompt plus the generation tasks with transformers'
(llmrec.training.notellm); export proves both give the same ids. Only torch is imported here.

    [BOS]<Instruction> <Input Note> The compression word is:"[EMB]". <Output Guidance> <Output>[EOS]

Category task: the input is {'title', 'topic', 'content'}; guidance "The category is:".
Tag task: "... generate <j> topics of the note."; the input leaves out 'topic'; guidance
"The <j> topics are:"; the output is j tags sampled from the note's own.

Segments are tokenised separately and concatenated, so the [EMB] index and the span that the
generation loss covers are exact, never re-derived from decoded text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

EMB_TOKEN = "[EMB]"
IGNORE_INDEX = -100

CATEGORY_INSTRUCTION = (
    "Extract the note information in json format, compress it into one word for recommendation, "
    "and generate the category of the note."
)
TAG_INSTRUCTION = (
    "Extract the note information in json format, compress it into one word for recommendation, "
    "and generate {j} topics of the note."
)
COMPRESSION = ' The compression word is:"'
AFTER_EMB = '". '
CATEGORY_GUIDANCE = "The category is:"
TAG_GUIDANCE = "The {j} topics are:"


@dataclass(frozen=True)
class PromptConfig:
    max_input_tokens: int = 64  # the note's JSON is cut to this many tokens
    tag_fraction: float = 0.4  # r: share of notes in a batch that do the tag task
    max_tags: int = 3  # j is drawn from 1..min(max_tags, number of tags)


@dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX except on the output and [EOS]
    emb_index: int  # position of [EMB] in input_ids


def note_json(item: dict, with_topic: bool) -> str:
    fields = {"title": item["title"]}
    if with_topic:
        fields["topic"] = item["topic"]
    fields["content"] = item["content"]
    return repr(fields)


class PromptBuilder:
    """Builds token sequences for notes; holds the tokenizer and the [EMB] id."""

    def __init__(self, tokenizer, config: PromptConfig):
        self.tok = tokenizer
        self.config = config
        self.emb_id = tokenizer.convert_tokens_to_ids(EMB_TOKEN)
        if self.emb_id is None or self.emb_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {EMB_TOKEN} token; call add_emb_token() first")
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = [tokenizer.eos_token_id]

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _prefix(self, instruction: str, note: str) -> list[int]:
        note_ids = self._ids(note)[: self.config.max_input_tokens]
        return self.bos + self._ids(instruction + " ") + note_ids + self._ids(COMPRESSION)

    def category_prompt(self, item: dict, with_output: bool = True) -> Prompt:
        head = self._prefix(CATEGORY_INSTRUCTION, note_json(item, with_topic=True))
        tail = self._ids(AFTER_EMB + CATEGORY_GUIDANCE)
        output = self._ids(" " + item["category"]) + self.eos if with_output else []
        return self._assemble(head, tail, output)

    def tag_prompt(self, item: dict, rng: random.Random) -> Prompt:
        tags = list(item["tags"])
        j = rng.randint(1, min(self.config.max_tags, len(tags)))
        chosen = rng.sample(tags, j)
        head = self._prefix(TAG_INSTRUCTION.format(j=j), note_json(item, with_topic=False))
        tail = self._ids(AFTER_EMB + TAG_GUIDANCE.format(j=j))
        output = self._ids(" " + ", ".join(chosen)) + self.eos
        return self._assemble(head, tail, output)

    def training_prompt(self, item: dict, rng: random.Random) -> Prompt:
        """Tag task for a fraction r of notes (those with tags), else the category task."""
        if item["tags"] and rng.random() < self.config.tag_fraction:
            return self.tag_prompt(item, rng)
        return self.category_prompt(item)

    def embedding_prompt(self, item: dict) -> Prompt:
        """The category prompt cut just after [EMB]: the note vector depends on nothing later (causal)."""
        head = self._prefix(CATEGORY_INSTRUCTION, note_json(item, with_topic=True))
        return self._assemble(head, [], [])

    def generation_prompt(self, item: dict) -> list[int]:
        """The category prompt up to its guidance, for generating the category."""
        return self.category_prompt(item, with_output=False).input_ids

    def _assemble(self, head: list[int], tail: list[int], output: list[int]) -> Prompt:
        ids = head + [self.emb_id] + tail + output
        labels = [IGNORE_INDEX] * (len(head) + 1 + len(tail)) + output
        return Prompt(ids, labels, emb_index=len(head))


def collate(prompts: list[Prompt], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of prompts into tensors: input_ids, attention_mask, labels (B, T), emb_index (B,)."""
    width = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    labels = torch.full((len(prompts), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        n = len(p.input_ids)
        ids[row, :n] = torch.tensor(p.input_ids)
        labels[row, :n] = torch.tensor(p.labels)
        mask[row, :n] = 1
    emb_index = torch.tensor([p.emb_index for p in prompts], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "emb_index": emb_index}
