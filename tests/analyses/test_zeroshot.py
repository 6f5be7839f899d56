"""Zero-shot classification: prompts -> text tower -> class vectors, checked against a manual
computation with the real open_clip tokenizer (and a transformers CLIP path), offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import zoolens
from zoolens.analyses.probes.zeroshot import (DEFAULT_TEMPLATES,
                                              is_image_text, read_templates, text_tokenizer,
                                              zeroshot_classifier, zeroshot_scores)
from zoolens.errors import InputError
from zoolens.sources import open_source
from zoolens.sinks import Need
from zoolens.taps import OUTPUT

CLASSES = ["circle", "square", "triangle", "cross"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "a blurry photo of the {}."]


@pytest.fixture(scope="module")
def clip_model(open_clip_tiny):
    return zoolens.load(f"open_clip:{open_clip_tiny}", pretrained=False, device="cpu")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _images(model, n: int = 12) -> tuple[torch.Tensor, list[str]]:
    src = open_source(f"synthetic:scenes?n={n}&size=32&seed=3")
    x = torch.stack([model.preprocess(src.decode(i).image) for i in range(n)])
    return x, list(src.labels)


def test_open_clip_classifier_matches_manual_and_predicts_argmax(clip_model):
    import open_clip

    clf = zeroshot_classifier(clip_model, CLASSES, TEMPLATES)

    # Manual: tokenize -> encode_text -> normalise -> mean over templates -> renormalise.
    tok = open_clip.get_tokenizer("tiny_clip")
    expected = []
    with torch.no_grad():
        for c in CLASSES:
            emb = clip_model.module.encode_text(tok([t.format(c) for t in TEMPLATES]))
            emb = _unit(emb.double().numpy())
            expected.append(_unit(emb.mean(0)))
    expected = np.stack(expected)
    assert clf.shape == (4, 32)
    np.testing.assert_allclose(clf, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(clf, axis=1), 1.0, atol=1e-12)
    # Different classes give different vectors (the class name reaches the text tower).
    assert np.abs(clf @ clf.T - np.eye(4)).max() > 1e-4

    x, _ = _images(clip_model)
    with torch.no_grad():
        img = clip_model.module.encode_image(x).double().numpy()
    scores = zeroshot_scores(img, clf)
    manual = _unit(img) @ expected.T
    np.testing.assert_allclose(scores, manual, atol=1e-6)
    np.testing.assert_array_equal(scores.argmax(1), manual.argmax(1))


def test_default_templates_run_and_batching_changes_nothing(clip_model):
    a = zeroshot_classifier(clip_model, CLASSES)
    b = zeroshot_classifier(clip_model, CLASSES, DEFAULT_TEMPLATES, batch_size=5)
    assert len(DEFAULT_TEMPLATES) >= 8 and all("{}" in t for t in DEFAULT_TEMPLATES)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_the_engine_taps_the_image_embedding_as_the_output(clip_model):
    """Zero-shot reads the forward output (encode_image) from the engine's `output` tap."""
    from zoolens.engine import run

    class Keep:
        need = Need({clip_model.name: {OUTPUT: {"mean"}}})
        rows: list = []

        def update(self, batch):
            self.rows.append(batch.features[clip_model.name][OUTPUT]["mean"])

    src = open_source("synthetic:scenes?n=4&size=32&seed=3")
    sink = Keep()
    run([clip_model], src, sink.need, [sink], batch_size=3, num_workers=0, progress=False)
    x, _ = _images(clip_model, 4)
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(sink.rows), clip_model.module.encode_image(x))
    assert clip_model.layer(OUTPUT).layout == "vector"


def test_not_image_text_is_refused():
    vit = zoolens.load("timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=1",
                       pretrained=False, device="cpu")
    assert not is_image_text(vit)
    with pytest.raises(InputError, match="no text tower"):
        zeroshot_classifier(vit, CLASSES, TEMPLATES)


def test_templates_file_and_bad_templates(tmp_path, clip_model):
    path = tmp_path / "t.txt"
    path.write_text("# my prompts\n\na photo of a {}.\n  a sketch of a {}.  \n")
    assert read_templates(path) == ["a photo of a {}.", "a sketch of a {}."]
    (tmp_path / "bad.txt").write_text("a photo of a thing\n")
    with pytest.raises(InputError, match=r"needs '\{\}'"):
        read_templates(tmp_path / "bad.txt")
    with pytest.raises(InputError, match="no such file"):
        read_templates(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="at least one class"):
        zeroshot_classifier(clip_model, [], TEMPLATES)


def test_scores_planted_and_zero_rows():
    clf = np.eye(3)
    feats = np.array([[0.0, 5.0, 0.1], [2.0, 0.0, 0.0], [0.1, 0.2, 9.0]])
    s = zeroshot_scores(feats, clf)
    np.testing.assert_array_equal(s.argmax(1), [1, 0, 2])
    np.testing.assert_allclose(s[1], [1.0, 0.0, 0.0])
    with pytest.warns(UserWarning, match="all-zero"):
        s = zeroshot_scores(np.zeros((1, 3)), clf)
    np.testing.assert_array_equal(s, 0.0)
    with pytest.raises(InputError, match="dimensions"):
        zeroshot_scores(np.ones((2, 4)), clf)


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    """A tiny transformers CLIP with a CLIPTokenizer built from open_clip's own BPE vocabulary
    (shipped with open_clip), so the Hugging Face path runs offline end to end."""
    transformers = pytest.importorskip("transformers")
    from open_clip.tokenizer import SimpleTokenizer

    root = tmp_path_factory.mktemp("hf_clip")
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(root)
    st = SimpleTokenizer()
    vocab = {k.replace("<start_of_text>", "<|startoftext|>").replace("<end_of_text>",
                                                                   "<|endoftext|>"): v
             for k, v in st.encoder.items()}
    (root / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(st.bpe_ranks, key=st.bpe_ranks.get)
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges)
                                     + "\n")
    transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt")) \
        .save_pretrained(root)
    return root


def test_hf_clip_classifier_matches_manual(hf_clip_dir, open_clip_tiny):
    import open_clip

    model = zoolens.load(f"hf:{hf_clip_dir}", pretrained=True, device="cpu")
    assert is_image_text(model) and model.layer("output").channels == 16
    tokenize = text_tokenizer(model)
    enc = tokenize(["a photo of a cat."])
    ref = open_clip.get_tokenizer(open_clip_tiny)(["a photo of a cat."])[0]
    n = int((ref != 0).sum())  # same BPE ids up to the end token; padding differs
    assert enc["input_ids"].shape == (1, 77)
    torch.testing.assert_close(enc["input_ids"][0, :n], ref[:n])

    clf = zeroshot_classifier(model, CLASSES, TEMPLATES)
    expected = []
    with torch.no_grad():
        for c in CLASSES:
            e = tokenize([t.format(c) for t in TEMPLATES])
            out = model.module.get_text_features(**e)
            emb = out if isinstance(out, torch.Tensor) else out.pooler_output
            expected.append(_unit(_unit(emb.double().numpy()).mean(0)))
    assert clf.shape == (4, 16)
    np.testing.assert_allclose(clf, np.stack(expected), atol=1e-6)
