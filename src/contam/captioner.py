"""The captioning study: an image captioner trained on each mix, scored on real images.

Two kinds of model, chosen by ``settings["kind"]``:

* ``embedded`` (:class:`Captioner`, the default): a timm encoder from scratch
  whose stride-8 feature map is projected to ``d_model`` and given a learned
  2-D positional embedding, read by a ``torch.nn.TransformerDecoder`` over
  token and position embeddings. The feature map is taken at stride 8 (a 4x4
  grid for a 32x32 image), not pooled and not at the classifier's stride 32:
  captions carry relation words ("left of", "above"), and the decoder can only
  say where a glyph is if the memory it attends to still has one token per
  place, each tagged with its place.
* ``folder`` (:class:`FolderCaptioner`, paper scale): a transformers
  ``VisionEncoderDecoderModel`` with its tokenizer and image processor, loaded
  from a local folder (never the hub) and fine-tuned on each mix.

Both train through :func:`contam.train.train` (``build_model``, ``loss_fn``,
``dataset``), so checkpoints, exact resume, SIGTERM, seeds, precision and
multi-process training are the classification study's. The log's
``train_top1`` column holds next-token accuracy (teacher forcing, pad ignored).

A training item is ``(image, token ids)``: the reference caption is one of
the image's captions, drawn with the item's augmentation seed, so each epoch
sees another paraphrase, reproducibly and whatever ``num_workers``. There is
no horizontal flip: it would turn "left of" into a lie. A small seeded
translation (``augment: {translate: 0.1}``) is the only augmentation offered.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from contam import train as training
from contam.images import load_rgb
from contam.io import write_json
from contam.logs import Throughput
from contam.models import MEAN, STD

log = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
# Target value that the loss ignores in the folder kind, whose pad id may equal
# its eos id (GPT-2): padding by id there would also hide every eos target.
IGNORE = -100
KINDS = ("embedded", "folder")
AUGMENT_KEYS = {"translate"}


# ---- text ------------------------------------------------------------------------

_APOSTROPHES = re.compile(r"['’`]")
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def tokenize(text: str) -> list[str]:
    """Words of a caption: lower case, punctuation stripped, split on whitespace.

    Apostrophes are removed ("dog's" -> "dogs") and every other punctuation
    character (hyphens included) becomes a space ("left-of" -> "left", "of"),
    so a word never carries punctuation and the vocabulary stays small.
    """
    text = _APOSTROPHES.sub("", str(text).lower())
    return _PUNCTUATION.sub(" ", text).split()


class Vocabulary:
    """Words to ids: ``<pad>`` = 0, ``<bos>``, ``<eos>``, ``<unk>``, then the words."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}, got {words[: len(SPECIALS)]}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary holds each word once")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        self.pad, self.bos, self.eos, self.unk = (self.index[s] for s in SPECIALS)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocabulary":
        """Every word seen ``min_count`` times or more, by count (descending) then alphabetically.

        The order depends only on the multiset of captions, never on their order.
        """
        counts = Counter(word for caption in captions for word in tokenize(caption))
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS), key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def encode(self, text: str, max_len: int) -> list[int]:
        """``<bos>``, the first ``max_len`` words, ``<eos>``, padded to ``max_len + 2`` ids."""
        ids = [self.index.get(w, self.unk) for w in tokenize(text)][:max_len]
        return [self.bos, *ids, self.eos] + [self.pad] * (max_len - len(ids))

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The words up to the first ``<eos>``, special tokens left out."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        words = []
        for i in ids:
            if i == self.eos:
                break
            if i >= len(SPECIALS):
                words.append(self.words[i])
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"words": list(self.words)}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        return cls(data["words"])


# ---- data ------------------------------------------------------------------------


def check_augment(augment: dict | None) -> dict:
    """The captioner's augmentation settings, refusing any that break spatial relations."""
    augment = dict(augment or {})
    if augment.get("hflip"):
        raise ValueError("captioner augment: hflip would swap 'left of' and 'right of' in the captions; leave it out")
    augment.pop("hflip", None)
    unknown = set(augment) - AUGMENT_KEYS
    if unknown:
        raise ValueError(f"captioner augment: unknown keys {sorted(unknown)} (allowed: {sorted(AUGMENT_KEYS)})")
    translate = float(augment.get("translate", 0.0))
    if not 0.0 <= translate < 0.5:
        raise ValueError(f"captioner augment.translate: a fraction of the image in [0, 0.5), got {translate}")
    return {"translate": translate}


def resize_transform(image_size: int) -> v2.Compose:
    """The deterministic first part of :func:`caption_transform`: a uint8 tensor, resized to a square."""
    return v2.Compose([v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)])


def finish_transform(mean: Sequence[float] = MEAN, std: Sequence[float] = STD, translate: float = 0.0) -> v2.Compose:
    """The rest of :func:`caption_transform`, from the resized uint8 tensor."""
    steps = [v2.RandomAffine(degrees=0.0, translate=(translate, translate))] if translate else []
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def caption_transform(image_size: int, mean: Sequence[float] = MEAN, std: Sequence[float] = STD, translate: float = 0.0) -> v2.Compose:
    """Resize to a square (no crop: a crop could cut off an object the caption names), then normalise."""
    return v2.Compose([*resize_transform(image_size).transforms, *finish_transform(mean, std, translate).transforms])


# Decoded, resized images of a dataset are kept in memory when all of them fit
# in this many bytes: the digit scenes (a few MB) are decoded once per run
# instead of once per epoch, which was a third of a step's time; a COCO-sized
# manifest never is.
CACHE_BYTES = 256 * 2**20


def caption_lists(manifest: pd.DataFrame) -> list[list[str]]:
    """The ``captions`` column as Python lists of strings (Parquet gives NumPy arrays)."""
    return [[str(c) for c in captions] for captions in manifest["captions"]]


class CaptionDataset(Dataset):
    """``(image, token ids)`` items of a manifest with ``path`` and ``captions``.

    A key ``(i, seed)`` draws the reference caption among image i's captions and
    the translation (if any) from ``seed`` alone, like ManifestDataset's
    augmentation: a function of (run seed, epoch, image), whatever the worker or
    resume point. A plain key ``i`` gives the first caption, unaugmented.
    ``vocab`` is anything with ``encode(text, max_len)``: a Vocabulary, or a
    folder model's tokenizer (:class:`FolderVocabulary`).
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        vocab: Any,
        image_size: int,
        max_len: int,
        augment: dict | None = None,
        seed: int = 0,
        *,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
    ):
        self.paths = manifest["path"].astype(str).to_numpy()
        self.captions = caption_lists(manifest)
        empty = [str(p) for p, c in zip(self.paths, self.captions) if not c]
        if empty:
            raise ValueError(f"{len(empty)} image(s) have no caption, e.g. {empty[0]}")
        self.vocab, self.max_len, self.seed = vocab, int(max_len), int(seed)
        augment = check_augment(augment)
        self.resize = resize_transform(image_size)
        self.plain = finish_transform(mean, std)
        self.augmented = finish_transform(mean, std, augment["translate"]) if augment["translate"] else self.plain
        # Room for every image as float32 (what is kept without augmentation).
        self.cache: dict[int, torch.Tensor] | None = {} if len(self.paths) * 3 * image_size**2 * 4 <= CACHE_BYTES else None

    def __len__(self) -> int:
        return len(self.paths)

    def tokens(self, i: int, caption: int) -> torch.Tensor:
        return torch.tensor(self.vocab.encode(self.captions[i][caption], self.max_len), dtype=torch.long)

    def choice(self, i: int, seed: int) -> int:
        """Which of image i's captions the item with ``seed`` teaches."""
        return int(np.random.default_rng([int(seed) & (2**63 - 1), self.seed]).integers(len(self.captions[i])))

    def image(self, i: int) -> torch.Tensor:
        """Image i decoded and resized (uint8), or ready to read (normalised float) when nothing augments it.

        Kept in memory after its first read when the dataset is small (``self.cache``).
        """
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        image = self.resize(load_rgb(self.paths[i]))
        if self.augmented is self.plain:
            image = self.plain(image)
        if self.cache is not None:
            self.cache[i] = image
        return image

    def __getitem__(self, key):
        if isinstance(key, tuple):
            i, seed = (int(k) for k in key)
            if self.augmented is self.plain:
                pixels = self.image(i)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.random.default_generator.manual_seed(seed)
                    pixels = self.augmented(self.image(i))
            return pixels, self.tokens(i, self.choice(i, seed))
        i = int(key)
        return (self.image(i) if self.augmented is self.plain else self.plain(self.image(i))), self.tokens(i, 0)


# ---- the embedded model --------------------------------------------------------------


class Captioner(nn.Module):
    """timm encoder (stride-8 map) + 2-D positions -> TransformerDecoder over words."""

    image_mean, image_std = MEAN, STD

    def __init__(
        self,
        arch: str,
        vocab_size: int,
        image_size: int,
        feature_stage: int = 2,
        d_model: int = 256,
        layers: int = 3,
        heads: int = 8,
        dropout: float = 0.1,
        max_len: int = 20,
        tie: bool = True,
        encoder_kwargs: dict | None = None,
        presence: bool = False,
    ):
        super().__init__()
        import timm

        self.image_size, self.max_len, self.tie = int(image_size), int(max_len), bool(tie)
        # From scratch, as the classifiers: never fetch pretrained weights.
        self.encoder = timm.create_model(arch, pretrained=False, features_only=True, out_indices=(feature_stage,), **(encoder_kwargs or {}))
        channels = self.encoder.feature_info.channels()[-1]
        # The grid size from one forward pass rather than from the reduction,
        # since padding rounds differently across architectures; eval mode so the
        # pass leaves the batch-norm statistics as they were.
        self.encoder.eval()
        with torch.no_grad():
            grid = tuple(self.encoder(torch.zeros(1, 3, self.image_size, self.image_size))[0].shape[-2:])
        self.encoder.train()
        self.grid = grid
        self.project = nn.Linear(channels, d_model)
        self.place = nn.Parameter(torch.empty(1, grid[0] * grid[1], d_model))
        self.memory_norm = nn.LayerNorm(d_model)
        self.embed = nn.Embedding(vocab_size, d_model)
        # bos + max_len words + eos: the longest sequence the decoder reads.
        self.position = nn.Parameter(torch.empty(1, self.max_len + 2, d_model))
        layer = nn.TransformerDecoderLayer(d_model, heads, 4 * d_model, dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(d_model))
        if self.tie:
            # Tied through F.linear on the embedding, not a shared Parameter:
            # safetensors refuses a state dict whose tensors share memory.
            self.out_bias = nn.Parameter(torch.zeros(vocab_size))
        else:
            self.out = nn.Linear(d_model, vocab_size)
        # The word-presence head (see presence_logits); absent when its loss is off,
        # so weights trained without it load strictly.
        self.presence = nn.Linear(d_model, vocab_size) if presence else None
        for p in (self.place, self.position, self.embed.weight):
            nn.init.normal_(p, std=0.02)

    @classmethod
    def from_settings(cls, settings: dict, vocab_size: int) -> "Captioner":
        return cls(
            settings["arch"],
            vocab_size,
            image_size=settings["image_size"],
            feature_stage=settings.get("feature_stage", 2),
            d_model=settings.get("d_model", 256),
            layers=settings.get("layers", 3),
            heads=settings.get("heads", 8),
            dropout=settings.get("dropout", 0.1),
            max_len=settings.get("max_len", 20),
            tie=settings.get("tie", True),
            encoder_kwargs=settings.get("encoder_kwargs"),
            presence=float(settings.get("presence_weight", 0)) > 0,
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The decoder's memory: one vector per place of the feature grid, [B, h*w, d_model]."""
        features = self.encoder(images)[0]
        if tuple(features.shape[-2:]) != self.grid:
            raise ValueError(f"images of {tuple(images.shape[-2:])} give a {tuple(features.shape[-2:])} feature grid; the model was built for {self.grid}")
        memory = self.project(features.flatten(2).transpose(1, 2)) + self.place
        return self.memory_norm(memory)

    def hidden(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.position.shape[1]:
            raise ValueError(f"{length} tokens exceed the model's {self.position.shape[1]} positions (max_len {self.max_len} + 2)")
        x = self.embed(tokens) + self.position[:, :length]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device, dtype=x.dtype)
        # No padding mask: pads come only after eos, and the causal mask keeps
        # every earlier position from seeing them.
        return self.decoder(x, memory, tgt_mask=causal, tgt_is_causal=True)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.tie:
            return F.linear(hidden, self.embed.weight, self.out_bias)
        return self.out(hidden)

    def presence_logits(self, memory: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] that each word is in the image's caption: every place scores every word, the image takes the best place.

        The maximum (multiple-instance learning) rather than the mean makes each
        place answer for what it holds, which is what the decoder's attention reads.
        """
        if self.presence is None:
            raise ValueError("this captioner has no word-presence head (presence_weight is 0)")
        return self.presence(memory).amax(dim=1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, with_presence: bool = False):
        """Logits [B, T, V] for the next token at every position of ``tokens`` [B, T].

        ``with_presence`` also returns :meth:`presence_logits` from the same
        memory (one call, so a DistributedDataParallel wrapper sees one forward).
        """
        memory = self.encode(images)
        logits = self.logits(self.hidden(memory, tokens))
        return (logits, self.presence_logits(memory)) if with_presence else logits

    def decode_step(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] of the token after ``tokens`` (the whole prefix is re-read: captions are short)."""
        return self.logits(self.hidden(memory, tokens)[:, -1])


# ---- the folder model (transformers) ------------------------------------------------------


def _first(*values):
    return next((v for v in values if v is not None), None)


def _processor_size(processor) -> int | None:
    """The square side an image processor resizes to (a dict in older transformers, a SizeDict in newer)."""
    size = processor.size
    if isinstance(size, int):
        return size
    for key in ("height", "shortest_edge"):
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value:
            return int(value)
    return None


class FolderCaptioner(nn.Module):
    """A local ``VisionEncoderDecoderModel`` behind the embedded model's interface.

    ``forward(images, tokens)`` gives logits; ids below zero (IGNORE padding)
    are read as the pad id. Weights tied inside the model (GPT-2's lm_head and
    word embedding) appear once in ``state_dict``, since safetensors refuses
    tensors that share memory; ``load_state_dict`` accepts their absence.
    """

    def __init__(self, model: nn.Module, tokenizer, image_size: int, image_mean: Sequence[float], image_std: Sequence[float], folder: str):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.folder = folder
        self.image_size, self.image_mean, self.image_std = int(image_size), tuple(image_mean), tuple(image_std)
        config, decoder = model.config, getattr(model.config, "decoder", None)
        generation = getattr(model, "generation_config", None)

        def setting(name: str):
            return _first(getattr(config, name, None), getattr(generation, name, None), getattr(decoder, name, None))

        self.start_id = _first(setting("decoder_start_token_id"), getattr(decoder, "bos_token_id", None), tokenizer.bos_token_id)
        self.eos_id = _first(setting("eos_token_id"), tokenizer.eos_token_id)
        if isinstance(self.eos_id, (list, tuple)):
            self.eos_id = self.eos_id[0]
        self.pad_id = _first(setting("pad_token_id"), tokenizer.pad_token_id, self.eos_id)
        if self.start_id is None or self.eos_id is None:
            raise ValueError(f"{folder}: the model config and tokenizer name no decoder start (bos) or eos token")
        self._shared = self._duplicates()

    @classmethod
    def load(cls, folder: str | Path) -> "FolderCaptioner":
        from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

        root = Path(folder)
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"captioner folder {root} does not exist or holds no config.json (the model is never downloaded)")
        # fp32 master weights whatever dtype the folder was saved in: the recipe's
        # precision is applied by autocast, as for the embedded model.
        model = VisionEncoderDecoderModel.from_pretrained(str(root), local_files_only=True, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(str(root), local_files_only=True)
        # The processor's size, not settings["image_size"] (the embedded kind's, a schema default here).
        size = _processor_size(processor) or int(getattr(model.config.encoder, "image_size"))
        return cls(model, tokenizer, size, processor.image_mean, processor.image_std, str(root))

    def _duplicates(self) -> set[str]:
        """State-dict keys whose tensor is an earlier key's (tied weights)."""
        seen, duplicates = set(), set()
        for key, value in super().state_dict(keep_vars=True).items():
            tag = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
            if tag in seen:
                duplicates.add(key)
            seen.add(tag)
        return duplicates

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in self._shared:
            state.pop(prefix + key, None)
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if k not in self._shared]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"weights do not fit the folder model {self.folder}: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        return result

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        tokens = torch.where(tokens < 0, torch.full_like(tokens, self.pad_id), tokens)
        return self.model(pixel_values=images, decoder_input_ids=tokens).logits

    def generate_text(self, images: torch.Tensor, beam_size: int, max_len: int) -> list[str]:
        out = self.model.generate(
            pixel_values=images,
            num_beams=beam_size,
            max_new_tokens=max_len,
            do_sample=False,
            decoder_start_token_id=self.start_id,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        return [" ".join(text.split()) for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


class FolderVocabulary:
    """A folder model's tokenizer with the Vocabulary interface the dataset and generate use."""

    def __init__(self, model: FolderCaptioner):
        self.tokenizer = model.tokenizer
        self.bos, self.eos, self.pad = model.start_id, model.eos_id, IGNORE

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str, max_len: int) -> list[int]:
        """Start id, the first ``max_len`` tokens, eos, padded with IGNORE to ``max_len + 2``."""
        ids = self.tokenizer(str(text), add_special_tokens=False)["input_ids"][:max_len]
        return [self.bos, *ids, self.eos] + [IGNORE] * (max_len - len(ids))

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return " ".join(self.tokenizer.decode([i for i in ids if i >= 0], skip_special_tokens=True).split())


# ---- loss --------------------------------------------------------------------------------


def presence_targets(tokens: torch.Tensor, vocab_size: int, ignore: Sequence[int]) -> torch.Tensor:
    """Multi-hot [B, V]: which words each caption of ``tokens`` [B, T] holds, ``ignore`` ids (pad, bos, eos) left out."""
    targets = torch.zeros(tokens.shape[0], vocab_size, device=tokens.device)
    targets.scatter_(1, tokens, 1.0)
    targets[:, list(ignore)] = 0.0
    return targets


def caption_loss(label_smoothing: float = 0.0, pad_id: int = 0, presence_weight: float = 0.0, special_ids: Sequence[int] = ()) -> training.LossFn:
    """Teacher forcing: read tokens[:, :-1], predict tokens[:, 1:], ignoring ``pad_id`` targets.

    ``correct``/``count`` are next-token accuracy over the targets that count.
    A ``presence_weight`` above 0 adds that times the word-presence loss
    (binary cross-entropy of :meth:`Captioner.presence_logits` against the
    words of the taught caption, ``special_ids`` left out); embedded kind only.
    """

    def loss_fn(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        # Drop the columns that are padding in every caption of the batch: the
        # causal decoder gives the same logits elsewhere, for less work.
        used = int((tokens != pad_id).any(0).nonzero().max()) + 1
        tokens = tokens[:, :used]
        targets = tokens[:, 1:]
        if presence_weight > 0:
            logits, presence = model(images, tokens[:, :-1], with_presence=True)
        else:
            logits = model(images, tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=pad_id, label_smoothing=label_smoothing)
        if presence_weight > 0:
            words = presence_targets(tokens, presence.shape[-1], [pad_id, *special_ids])
            loss = loss + presence_weight * F.binary_cross_entropy_with_logits(presence.float(), words)
        mask = targets != pad_id
        correct = int(((logits.argmax(-1) == targets) & mask).sum())
        return loss, correct, int(mask.sum())

    return loss_fn


# ---- decoding --------------------------------------------------------------------------------


def _step_log_probs(model: Captioner, memory: torch.Tensor, tokens: torch.Tensor, banned: list[int], last: bool, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the next token (full softmax), and the same with disallowed choices at -inf.

    Scores use the full softmax, so a hypothesis scores what the model gives
    it; only the choice is restricted (no pad or bos; only eos at the last step).
    """
    log_probs = torch.log_softmax(model.decode_step(memory, tokens).float(), dim=-1)
    allowed = log_probs.clone()
    allowed[:, banned] = -math.inf
    if last:
        allowed[:, :eos] = -math.inf
        allowed[:, eos + 1 :] = -math.inf
    return log_probs, allowed


def greedy_ids(model: Captioner, images: torch.Tensor, bos: int, eos: int, max_len: int, banned: Sequence[int] = ()) -> list[list[int]]:
    """The most likely next token at each step; ids after bos, ending with eos (forced after ``max_len`` words)."""
    memory = model.encode(images)
    tokens = torch.full((len(images), 1), bos, dtype=torch.long, device=images.device)
    finished = torch.zeros(len(images), dtype=torch.bool, device=images.device)
    for step in range(max_len + 1):
        _, allowed = _step_log_probs(model, memory, tokens, list(banned), step == max_len, eos)
        chosen = torch.where(finished, torch.full_like(finished, eos, dtype=torch.long), allowed.argmax(-1))
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)
        finished |= chosen == eos
        if bool(finished.all()):
            break
    out = []
    for row in tokens[:, 1:].tolist():
        out.append(row[: row.index(eos) + 1])
    return out


def beam_ids(model: Captioner, images: torch.Tensor, bos: int, eos: int, max_len: int, beam_size: int, banned: Sequence[int] = ()) -> list[list[int]]:
    """Beam search on the sum of log-probabilities, no length penalty.

    Each step expands every live hypothesis and ranks the candidates. An eos
    candidate ranked among the best ``beam_size`` becomes a finished
    hypothesis; the best other candidates (``beam_size`` of them) live on. An
    image is done when its best finished score is at least its best live score,
    since adding tokens only lowers a sum of log-probabilities; at ``max_len``
    words only eos may follow, so every hypothesis finishes. Without a length
    penalty short captions are slightly favoured; the training captions end
    with eos after the last word, so the model's own eos probability decides
    length. Ties go to the lower (beam, token) index, so results are deterministic.
    """
    n, k = len(images), int(beam_size)
    device = images.device
    memory = model.encode(images).repeat_interleave(k, dim=0)
    tokens = torch.full((n * k, 1), bos, dtype=torch.long, device=device)
    # Only the first beam of each image is live at the start: the others would duplicate it.
    scores = torch.full((n, k), -math.inf, device=device)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    done = [False] * n
    for step in range(max_len + 1):
        _, allowed = _step_log_probs(model, memory, tokens, list(banned), step == max_len, eos)
        vocab = allowed.shape[-1]
        candidates = (scores.reshape(-1, 1) + allowed).reshape(n, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=1)
        next_beams = torch.zeros(n, k, dtype=torch.long)
        next_tokens = torch.full((n, k), eos, dtype=torch.long)
        next_scores = torch.full((n, k), -math.inf)
        top_scores, top_index = top_scores.cpu().tolist(), top_index.cpu().tolist()
        prefixes = tokens[:, 1:].cpu().tolist()
        for i in range(n):
            if done[i]:
                continue
            live = 0
            for rank, (score, index) in enumerate(zip(top_scores[i], top_index[i])):
                if score == -math.inf or live == k:
                    break
                beam, token = divmod(index, vocab)
                if token == eos:
                    if rank < k:
                        finished[i].append((score, prefixes[i * k + beam] + [eos]))
                    continue
                next_beams[i, live], next_tokens[i, live], next_scores[i, live] = beam, token, score
                live += 1
            best_live = float(next_scores[i, 0]) if live else -math.inf
            if finished[i] and max(s for s, _ in finished[i]) >= best_live:
                done[i] = True
                next_scores[i] = -math.inf
        if all(done):
            break
        rows = (torch.arange(n)[:, None] * k + next_beams).reshape(-1).to(device)
        tokens = torch.cat([tokens[rows], next_tokens.reshape(-1, 1).to(device)], dim=1)
        scores = next_scores.to(device)
    # max() keeps the first of equal scores: the one finished earliest.
    return [max(hypotheses, key=lambda h: h[0])[1] for hypotheses in finished]


@torch.no_grad()
def sequence_log_probs(model: Captioner, images: torch.Tensor, sequences: Sequence[Sequence[int]], bos: int) -> torch.Tensor:
    """The model's log-probability of each id sequence (after bos) for its image: a score to compare decoders."""
    was_training = model.training
    model.eval()
    try:
        memory = model.encode(images)
        totals = []
        for i, ids in enumerate(sequences):
            tokens = torch.tensor([[bos, *ids]], dtype=torch.long, device=images.device)
            logits = model.logits(model.hidden(memory[i : i + 1], tokens[:, :-1]))
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            totals.append(log_probs[0].gather(1, tokens[0, 1:, None]).sum())
        return torch.stack(totals)
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(model: nn.Module, images: torch.Tensor, vocab: Vocabulary | FolderVocabulary, beam_size: int, max_len: int) -> list[str]:
    """Captions of a batch of normalised images: greedy for ``beam_size`` 1, else beam search (:func:`beam_ids`)."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    was_training = model.training
    model.eval()
    try:
        if isinstance(model, FolderCaptioner):
            return model.generate_text(images, beam_size, max_len)
        banned = [vocab.pad, vocab.bos]
        if beam_size == 1:
            ids = greedy_ids(model, images, vocab.bos, vocab.eos, max_len, banned)
        else:
            ids = beam_ids(model, images, vocab.bos, vocab.eos, max_len, beam_size, banned)
        return [vocab.decode(row) for row in ids]
    finally:
        model.train(was_training)


def caption_images(
    model: nn.Module,
    vocab: Vocabulary | FolderVocabulary,
    paths: list[str],
    image_size: int | None,
    beam_size: int,
    max_len: int,
    batch_size: int,
    device: torch.device | str,
    progress: bool = True,
) -> list[str]:
    """A caption for each image file, in order.

    ``image_size`` is the embedded model's (None: the model's own); a folder
    model always takes its image processor's size, mean and std.
    """
    size = int(image_size or model.image_size)
    if isinstance(model, FolderCaptioner):
        size = model.image_size
    elif size != model.image_size:
        raise ValueError(f"image_size {size} differs from the {model.image_size} the model was built for")
    transform = caption_transform(size, model.image_mean, model.image_std)
    meter = Throughput()
    captions: list[str] = []
    starts = range(0, len(paths), batch_size)
    for start in tqdm(starts, desc="caption", mininterval=10, disable=not progress, total=len(starts)):
        batch = torch.stack([transform(load_rgb(p)) for p in paths[start : start + batch_size]]).to(device)
        captions += generate(model, batch, vocab, beam_size, max_len)
        meter.add(len(batch))
    log.info("captioned %s images (beam %d)", meter, beam_size)
    return captions


# ---- the stage -----------------------------------------------------------------------------


def check_kind(settings: dict) -> str:
    kind = settings.get("kind", "embedded")
    if kind not in KINDS:
        raise ValueError(f"captioner kind: expected one of {KINDS}, got {kind!r}")
    return kind


def read_vocab(path: str | Path) -> Vocabulary:
    return Vocabulary.from_dict(json.loads(Path(path).read_text()))


def _fix_vocab(manifest: pd.DataFrame, settings: dict, out: Path) -> Vocabulary:
    """Build the vocabulary and write it before training, so that a resumed run reads the same ids."""
    vocab = Vocabulary.build((c for captions in caption_lists(manifest) for c in captions), int(settings.get("min_count", 1)))
    path = out / "vocab.json"
    if path.exists():
        stored = read_vocab(path)
        if stored == vocab:
            return vocab
        if (out / "checkpoint.pt").exists():
            raise ValueError(
                f"{path} differs from the vocabulary of this manifest, and {out / 'checkpoint.pt'} was trained with it: "
                "the run directory belongs to other data; remove it to start over"
            )
        log.warning("replacing %s: it belongs to another manifest and no checkpoint uses it", path)
    write_json(vocab.to_dict(), path)
    return vocab


def train_captioner(
    manifest: pd.DataFrame,
    settings: dict,
    recipe: dict,
    seed: int,
    out_dir: str | Path,
    fingerprint: str,
    device: torch.device,
    processes: int = 1,
    num_workers: int = 0,
    stop_after_steps: int | None = None,
) -> dict:
    """Train a captioner on ``manifest`` through :func:`contam.train.train`; its summary dict.

    Writes ``vocab.json`` (embedded kind), ``model.safetensors`` and
    ``train_log.csv`` in ``out_dir``. Augmentation comes from
    ``settings["augment"]``; the recipe's (a classifier's, with flips) is not used.
    """
    kind = check_kind(settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    max_len = int(settings.get("max_len", 20))
    if kind == "embedded":
        vocab = _fix_vocab(manifest, settings, out)
        size, mean, std, pad = int(settings["image_size"]), MEAN, STD, vocab.pad
        presence_weight, special = float(settings.get("presence_weight", 0)), [vocab.bos, vocab.eos]

        def build_model() -> nn.Module:
            return Captioner.from_settings(settings, len(vocab))
    else:
        folder = FolderCaptioner.load(settings["folder"])
        vocab = FolderVocabulary(folder)
        size, mean, std, pad = folder.image_size, folder.image_mean, folder.image_std, IGNORE
        presence_weight, special = 0.0, []
        del folder  # build_model loads afresh after train.train has seeded the RNGs

        def build_model() -> nn.Module:
            return FolderCaptioner.load(settings["folder"])

    dataset = CaptionDataset(manifest, vocab, size, max_len, settings.get("augment"), seed, mean=mean, std=std)
    return training.train(
        manifest,
        settings,
        recipe,
        len(vocab),
        seed,
        out,
        fingerprint,
        device,
        num_workers=num_workers,
        stop_after_steps=stop_after_steps,
        dataset=dataset,
        processes=processes,
        build_model=build_model,
        loss_fn=caption_loss(recipe.get("label_smoothing", 0.0), pad, presence_weight, special),
    )


def load_captioner(run_dir: str | Path, settings: dict, device: torch.device | str) -> tuple[nn.Module, Vocabulary | FolderVocabulary]:
    """The trained model of ``run_dir`` (strict weights, eval mode) and its vocabulary."""
    run = Path(run_dir)
    if check_kind(settings) == "embedded":
        vocab = read_vocab(run / "vocab.json")
        model = Captioner.from_settings(settings, len(vocab))
    else:
        model = FolderCaptioner.load(settings["folder"])
        vocab = FolderVocabulary(model)
    model.load_state_dict(load_file(str(run / "model.safetensors")), strict=True)
    return model.to(device).eval(), vocab
