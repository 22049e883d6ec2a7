"""The captioner: vocabulary, data, model, decoding, training through contam.train, and the folder kind."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from contam import captioner as cap
from contam import train

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 230), "yellow": (230, 220, 40)}
SETTINGS = {
    "kind": "embedded", "arch": "resnet10t", "image_size": 32, "feature_stage": 2,
    "d_model": 64, "layers": 2, "heads": 4, "dropout": 0.0, "max_len": 10,
}
RECIPE = {
    "epochs": 40, "batch_size": 8, "optimizer": "adamw", "learning_rate": 3e-3, "weight_decay": 0.01,
    "momentum": 0.9, "warmup_epochs": 1, "label_smoothing": 0.0, "precision": "fp32", "channels_last": False, "compile": False,
}
CPU = torch.device("cpu")


def make_scenes(root, n: int = 40, seed: int = 0) -> pd.DataFrame:
    """32x32 images of two coloured squares side by side or one above the other, 5 paraphrases each.

    Half the captions name the pair in the other order with the inverse
    relation, so only a model that sees where each square is can be right.
    """
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        first, second = (names[i] for i in rng.choice(len(names), 2, replace=False))
        horizontal = k % 2 == 0
        line = int(rng.integers(0, 4))
        a = int(rng.integers(0, 3))
        b = int(rng.integers(a + 1, 4))
        cells = [(line, a), (line, b)] if horizontal else [(a, line), (b, line)]
        pixels = np.full((32, 32, 3), 90, np.uint8)
        for (row, col), colour in zip(cells, (first, second)):
            pixels[row * 8 + 1 : row * 8 + 7, col * 8 + 1 : col * 8 + 7] = COLOURS[colour]
        path = root / f"{k}.png"
        Image.fromarray(pixels).save(path)
        relation, inverse = ("left of", "right of") if horizontal else ("above", "below")
        captions = [
            f"a {first} square {relation} a {second} square",
            f"The {first} square is {relation} the {second} square.",
            f"a {second} square {inverse} a {first} square",
            f"{first} square {relation} {second} square",
            f"there is a {first} square {relation} a {second} square",
        ]
        rows.append({"image_id": k, "path": str(path), "captions": captions, "split": "train"})
    return pd.DataFrame(rows)


def meaning(caption: str) -> tuple | None:
    """(colour, relation, colour) with the relation made left-of or above; None if it does not parse."""
    words = cap.tokenize(caption)
    colours = [w for w in words if w in COLOURS]
    relations = [w for w in words if w in ("left", "right", "above", "below")]
    if len(colours) != 2 or len(relations) != 1:
        return None
    a, b = colours
    relation = relations[0]
    if relation in ("right", "below"):
        a, b, relation = b, a, {"right": "left", "below": "above"}[relation]
    return a, relation, b


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> pd.DataFrame:
    return make_scenes(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    """One captioner trained on the scenes (200 steps): its run folder and summary."""
    out = tmp_path_factory.mktemp("run")
    summary = cap.train_captioner(scenes, SETTINGS, RECIPE, seed=0, out_dir=out, fingerprint="f", device=CPU)
    return out, summary


def batch_of(manifest: pd.DataFrame) -> torch.Tensor:
    transform = cap.caption_transform(32)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in manifest["path"]])


# ---- text --------------------------------------------------------------------------


def test_tokenize_lowers_and_strips_punctuation():
    assert cap.tokenize("  The Red-Square, left of the dog's BOX!\n") == ["the", "red", "square", "left", "of", "the", "dogs", "box"]
    assert cap.tokenize("...") == []


def test_vocabulary_is_deterministic_and_round_trips(tmp_path):
    captions = ["a red square", "A blue square.", "a red circle", "zebra"]
    vocab = cap.Vocabulary.build(captions)
    assert vocab.words[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and vocab.pad == 0
    # by count (a: 3, red/square: 2), then alphabetically among equal counts
    assert vocab.words[4:] == ["a", "red", "square", "blue", "circle", "zebra"]
    assert cap.Vocabulary.build(reversed(captions)) == vocab
    assert len(vocab) == 10
    assert cap.Vocabulary.build(captions, min_count=2).words[4:] == ["a", "red", "square"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab.to_dict()))
    again = cap.Vocabulary.from_dict(json.loads((tmp_path / "vocab.json").read_text()))
    assert again == vocab and again.words == vocab.words
    with pytest.raises(ValueError, match="starts with"):
        cap.Vocabulary(["a", "<pad>"])


def test_encode_pads_truncates_and_decode_stops_at_eos():
    vocab = cap.Vocabulary.build(["a red square left of a blue square"])
    ids = vocab.encode("A red square, left of a blue square", max_len=10)
    assert len(ids) == 12 and ids[0] == vocab.bos
    assert ids[9] == vocab.eos and ids[10:] == [vocab.pad, vocab.pad]
    assert vocab.decode(ids) == "a red square left of a blue square"
    short = vocab.encode("a red square left of a blue square", max_len=3)
    assert short == [vocab.bos, vocab.index["a"], vocab.index["red"], vocab.index["square"], vocab.eos]
    assert vocab.encode("a purple square", 4)[2] == vocab.unk
    # eos ends the caption; specials are left out; a tensor decodes the same
    assert vocab.decode(torch.tensor([vocab.bos, vocab.index["red"], vocab.unk, vocab.eos, vocab.index["blue"]])) == "red"


# ---- data ----------------------------------------------------------------------------


def test_dataset_caption_choice_is_seeded_and_reproducible(scenes):
    vocab = cap.Vocabulary.build(c for cs in scenes["captions"] for c in cs)
    dataset = cap.CaptionDataset(scenes, vocab, 32, 10, None, seed=0)
    image, tokens = dataset[(3, 12345)]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert tokens.dtype == torch.long and tokens.shape == (12,)
    # A fresh dataset (another worker, a resumed run) gives the same item for the same key.
    twin = cap.CaptionDataset(scenes, vocab, 32, 10, None, seed=0)
    assert torch.equal(twin[(3, 12345)][1], tokens) and torch.equal(twin[(3, 12345)][0], image)
    chosen = {vocab.decode(dataset[(3, s)][1]) for s in range(40)}
    references = {" ".join(cap.tokenize(c)) for c in scenes["captions"][3]}
    assert chosen <= references and len(chosen) >= 3  # the draw moves with the seed
    assert vocab.decode(dataset[3][1]) == " ".join(cap.tokenize(scenes["captions"][3][0]))
    # Without augmentation the pixels do not depend on the seed.
    assert torch.equal(dataset[(3, 1)][0], dataset[(3, 2)][0])


def test_augmentation_is_seeded_and_never_flips(scenes):
    vocab = cap.Vocabulary.build(c for cs in scenes["captions"] for c in cs)
    with pytest.raises(ValueError, match="left of"):
        cap.CaptionDataset(scenes, vocab, 32, 10, {"hflip": True}, seed=0)
    with pytest.raises(ValueError, match="unknown"):
        cap.CaptionDataset(scenes, vocab, 32, 10, {"crop_scale": [0.5, 1]}, seed=0)
    dataset = cap.CaptionDataset(scenes, vocab, 32, 10, {"translate": 0.2}, seed=0)
    assert torch.equal(dataset[(5, 7)][0], dataset[(5, 7)][0])
    assert any(not torch.equal(dataset[(5, 7)][0], dataset[(5, s)][0]) for s in range(8, 12))


# ---- model ---------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_captioner_shapes_and_causality(tie, tmp_path):
    torch.manual_seed(0)
    model = cap.Captioner.from_settings({**SETTINGS, "tie": tie}, vocab_size=30).eval()
    assert model.grid == (4, 4)  # stride 8 on 32x32: the decoder sees 16 places
    images = torch.randn(2, 3, 32, 32)
    tokens = torch.randint(4, 30, (2, 7))
    memory = model.encode(images)
    assert memory.shape == (2, 16, 64)
    logits = model(images, tokens)
    assert logits.shape == (2, 7, 30)
    torch.testing.assert_close(model.decode_step(memory, tokens), logits[:, -1])
    # A later token never changes the logits of earlier positions.
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 30
    torch.testing.assert_close(model(images, changed)[:, :-1], logits[:, :-1])
    # No tensors share memory, so train.write_outputs can save the weights.
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="positions"):
        model(images, torch.zeros(2, 13, dtype=torch.long))


def test_caption_loss_ignores_padding():
    torch.manual_seed(0)
    model = cap.Captioner.from_settings(SETTINGS, vocab_size=20).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = torch.tensor([[1, 5, 6, 7, 2, 0, 0], [1, 8, 2, 0, 0, 0, 0]])
    loss, correct, count = cap.caption_loss()(model, images, tokens)
    assert count == 6  # 4 + 2 targets, eos included, pads not
    # The same loss by hand, over the unpadded captions.
    by_hand = []
    for row, length in ((0, 5), (1, 3)):
        logits = model(images[row : row + 1], tokens[row : row + 1, : length - 1])[0]
        by_hand.append(torch.nn.functional.cross_entropy(logits, tokens[row, 1:length], reduction="sum"))
    torch.testing.assert_close(loss, torch.stack(by_hand).sum() / 6)
    assert 0 <= correct <= count


def test_presence_targets_mark_the_caption_words_only():
    tokens = torch.tensor([[1, 5, 6, 5, 2, 0], [1, 7, 2, 0, 0, 0]])
    targets = cap.presence_targets(tokens, 9, ignore=[0, 1, 2])
    assert targets.tolist() == [[0, 0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1, 0]]


def test_presence_loss_is_added_with_its_weight_and_its_head_is_optional():
    torch.manual_seed(0)
    images, tokens = torch.randn(2, 3, 32, 32), torch.tensor([[1, 5, 6, 7, 2, 0, 0], [1, 8, 2, 0, 0, 0, 0]])
    plain = cap.Captioner.from_settings(SETTINGS, vocab_size=20)
    assert plain.presence is None
    with pytest.raises(ValueError, match="presence_weight"):
        plain.presence_logits(plain.encode(images))
    torch.manual_seed(0)
    model = cap.Captioner.from_settings({**SETTINGS, "presence_weight": 2.5}, vocab_size=20).eval()
    memory = model.encode(images)
    scores = model.presence_logits(memory)
    # Each word's image score is its best place's score.
    torch.testing.assert_close(scores, model.presence(memory).max(dim=1).values)
    logits, presence = model(images, tokens[:, :-1], with_presence=True)
    torch.testing.assert_close(logits, model(images, tokens[:, :-1]))
    torch.testing.assert_close(presence, scores)
    caption_only, correct, count = cap.caption_loss(0.0, 0)(model, images, tokens)
    both, correct_both, count_both = cap.caption_loss(0.0, 0, 2.5, [1, 2])(model, images, tokens)
    words = cap.presence_targets(tokens, 20, [0, 1, 2])
    expected = caption_only + 2.5 * torch.nn.functional.binary_cross_entropy_with_logits(scores, words)
    torch.testing.assert_close(both, expected)
    # Accuracy stays next-token accuracy.
    assert (correct_both, count_both) == (correct, count)
    # Weights trained with the head do not load into a model without it: strict.
    with pytest.raises(RuntimeError):
        plain.load_state_dict(model.state_dict(), strict=True)


# ---- training and decoding -------------------------------------------------------------------


def test_training_learns_to_caption(trained, scenes):
    out, summary = trained
    assert summary["epochs"] == RECIPE["epochs"]
    history = pd.read_csv(out / "train_log.csv")
    assert history["loss"].iloc[-1] < 0.5 * history["loss"].iloc[0]
    # Five paraphrases per image cap next-token accuracy well below 1; chance is 1/len(vocab).
    assert history["train_top1"].iloc[-1] > 0.6
    model, vocab = cap.load_captioner(out, SETTINGS, CPU)
    captions = cap.caption_images(model, vocab, list(scenes["path"]), 32, 1, 10, 16, CPU, progress=False)
    right = np.mean([meaning(c) == meaning(refs[0]) for c, refs in zip(captions, scenes["captions"])])
    # 24 (colour, relation, colour) meanings: one fixed caption is right for about 1 in 24.
    assert right >= 0.25, list(zip(captions, scenes["captions"].str[0]))[:8]


def test_beam_search_of_one_is_greedy_and_beam_three_scores_higher(trained, scenes):
    model, vocab = cap.load_captioner(trained[0], SETTINGS, CPU)
    images = batch_of(scenes)
    banned = [vocab.pad, vocab.bos]
    with torch.no_grad():
        greedy = cap.greedy_ids(model, images, vocab.bos, vocab.eos, 10, banned)
        assert cap.beam_ids(model, images, vocab.bos, vocab.eos, 10, 1, banned) == greedy
        beam = cap.beam_ids(model, images, vocab.bos, vocab.eos, 10, 3, banned)
    assert all(ids[-1] == vocab.eos and len(ids) <= 11 for ids in beam + greedy)
    assert cap.generate(model, images, vocab, 1, 10) == [vocab.decode(ids) for ids in greedy]
    assert cap.generate(model, images, vocab, 3, 10) == [vocab.decode(ids) for ids in beam]
    gain = cap.sequence_log_probs(model, images, beam, vocab.bos) - cap.sequence_log_probs(model, images, greedy, vocab.bos)
    assert gain.min() >= -1e-4, gain
    # Decoding is deterministic.
    assert cap.generate(model, images, vocab, 3, 10) == cap.generate(model, images, vocab, 3, 10)


def test_load_captioner_round_trip(trained, scenes):
    out, _ = trained
    model, vocab = cap.load_captioner(out, SETTINGS, CPU)
    assert not model.training and vocab == cap.read_vocab(out / "vocab.json")
    stored = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(stored[k], v) for k, v in model.state_dict().items())
    paths = list(scenes["path"][:12])
    first = cap.caption_images(model, vocab, paths, 32, 3, 10, 5, CPU, progress=False)
    again = cap.caption_images(*cap.load_captioner(out, SETTINGS, CPU), paths, 32, 3, 10, 12, CPU, progress=False)
    assert first == again and all(isinstance(c, str) and c for c in first)
    # caption_images reads files as the dataset's plain items do.
    assert first == cap.generate(model, batch_of(scenes.iloc[:12]), vocab, 3, 10)
    # Strict: weights of another vocabulary size do not load.
    with pytest.raises(RuntimeError):
        cap.Captioner.from_settings(SETTINGS, len(vocab) + 1).load_state_dict(stored, strict=True)


def test_kill_and_resume_gives_identical_weights(scenes, tmp_path, caplog):
    """Stopped mid-way through epoch 2 of 2, then rerun: byte-identical to an uninterrupted run."""
    manifest = scenes.iloc[:15]
    settings = {**SETTINGS, "d_model": 32, "layers": 1, "dropout": 0.2, "augment": {"translate": 0.1}}
    recipe = {**RECIPE, "epochs": 2, "batch_size": 4, "label_smoothing": 0.1}

    def run(out, **kwargs):
        return cap.train_captioner(manifest, settings, recipe, seed=1, out_dir=out, fingerprint="f", device=CPU, **kwargs)

    run(tmp_path / "straight")
    with pytest.raises(train.Preempted):
        run(tmp_path / "resumed", stop_after_steps=6)  # 15 scenes in batches of 4: 4 steps an epoch
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    assert cap.read_vocab(tmp_path / "resumed" / "vocab.json") == cap.read_vocab(tmp_path / "straight" / "vocab.json")
    # Other captions make another vocabulary, which the checkpoint was not trained with.
    other = manifest.assign(captions=[[c + " indeed" for c in cs] for cs in manifest["captions"]])
    with pytest.raises(ValueError, match="vocab.json"):
        cap.train_captioner(other, settings, recipe, seed=1, out_dir=tmp_path / "resumed", fingerprint="f", device=CPU)
    with caplog.at_level(logging.INFO, logger="contam.train"):
        summary = run(tmp_path / "resumed")
    assert "resuming from checkpoint at epoch 1, step 2" in caplog.text
    assert summary["epochs"] == 2 and not (tmp_path / "resumed" / "checkpoint.pt").exists()
    straight = (tmp_path / "straight" / "model.safetensors").read_bytes()
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == straight
    log = pd.read_csv(tmp_path / "resumed" / "train_log.csv")
    assert list(log["epoch"]) == [0, 1] and (log["train_top1"] > 0).all()


def test_empty_manifest_keeps_initial_weights(scenes, tmp_path):
    summary = cap.train_captioner(scenes.iloc[:0], SETTINGS, RECIPE, seed=0, out_dir=tmp_path, fingerprint="f", device=CPU)
    assert summary["epochs"] == 0
    model, vocab = cap.load_captioner(tmp_path, SETTINGS, CPU)
    assert len(vocab) == 4
    assert len(cap.caption_images(model, vocab, list(scenes["path"][:2]), 32, 2, 4, 2, CPU, progress=False)) == 2


# ---- the folder kind -------------------------------------------------------------------------


def save_tiny_encoder_decoder(folder, captions: list[str]):
    """A tiny ViT + GPT-2 VisionEncoderDecoderModel with a word-level tokenizer, saved like real weights."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import GPT2Config, PreTrainedTokenizerFast, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig, ViTImageProcessor

    words = ["<pad>", "<bos>", "<eos>", "<unk>"] + sorted({w for c in captions for w in cap.tokenize(c)})
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    encoder = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    decoder = GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=32, vocab_size=len(words), add_cross_attention=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 0
    torch.manual_seed(0)
    VisionEncoderDecoderModel(config=config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_folder_kind_fine_tunes_and_captions(scenes, tmp_path, caplog):
    manifest = scenes.iloc[:8]
    folder = save_tiny_encoder_decoder(tmp_path / "tiny-ved", [c for cs in manifest["captions"] for c in cs])
    # image_size is the embedded kind's (the schema fills it in): the folder kind takes its processor's.
    settings = {"kind": "folder", "folder": str(folder), "max_len": 10, "image_size": 224}
    recipe = {**RECIPE, "epochs": 1, "batch_size": 4, "learning_rate": 1e-3}
    out = tmp_path / "run"

    def run(out_dir, **kwargs):
        return cap.train_captioner(manifest, settings, recipe, seed=0, out_dir=out_dir, fingerprint="f", device=CPU, **kwargs)

    # Stopped after one of two steps and resumed: the checkpoint holds the tied weights once, and loads.
    with pytest.raises(train.Preempted):
        run(out, stop_after_steps=1)
    with caplog.at_level(logging.INFO, logger="contam.train"):
        assert run(out)["epochs"] == 1
    assert "resuming from checkpoint at epoch 0, step 1" in caplog.text
    run(tmp_path / "straight")
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "straight" / "model.safetensors").read_bytes()
    log = pd.read_csv(out / "train_log.csv")
    assert np.isfinite(log["loss"]).all() and 0 <= log["train_top1"].iloc[0] <= 1
    model, vocab = cap.load_captioner(out, settings, CPU)
    assert isinstance(model, cap.FolderCaptioner) and not model.training and model.image_size == 32
    # GPT-2's lm_head is its word embedding: stored once (safetensors refuses shared
    # tensors), and the strict load above restored it under both names.
    stored = load_file(str(out / "model.safetensors"))
    assert len(stored) == len(torch.nn.Module.state_dict(model)) - 1
    assert torch.equal(model.model.decoder.lm_head.weight, model.model.decoder.transformer.wte.weight)
    base = cap.FolderCaptioner.load(folder)
    assert any(not torch.equal(v, base.state_dict()[k]) for k, v in model.state_dict().items())  # fine-tuned
    captions = cap.caption_images(model, vocab, list(manifest["path"]), 32, 2, 6, 4, CPU, progress=False)
    assert len(captions) == 8 and all(isinstance(c, str) for c in captions)
    assert all(len(c.split()) <= 6 for c in captions)
    # Token ids: start, words, eos, then IGNORE padding (GPT-2's pad may be its eos).
    ids = vocab.encode(manifest["captions"].iloc[0][0], 10)
    assert ids[0] == model.start_id and ids.count(model.eos_id) == 1 and ids[-1] == cap.IGNORE


def test_missing_folder_is_named(scenes, tmp_path):
    missing = tmp_path / "no-such-model"
    settings = {"kind": "folder", "folder": str(missing), "max_len": 10}
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        cap.train_captioner(scenes.iloc[:4], settings, RECIPE, seed=0, out_dir=tmp_path / "run", fingerprint="f", device=CPU)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        cap.load_captioner(tmp_path / "run", settings, CPU)
    with pytest.raises(ValueError, match="kind"):
        cap.train_captioner(scenes.iloc[:4], {**settings, "kind": "hub"}, RECIPE, seed=0, out_dir=tmp_path / "run", fingerprint="f", device=CPU)
