#!/usr/bin/env python3
"""Write a tiny random-weight multimodal projector ("mmproj") GGUF for tests.

The file is loadable by llama.cpp's libmtmd (``llama_cpp.mtmd_cpp`` in
llama-cpp-python 0.3.36) together with the bundled SmolLM2-135M-Instruct text
model (n_embd 576). Its outputs are noise: the point is that every code path
(clip loader, image preprocessing, vision encoder, projector, embedding decode)
is real.

Default projector: ``mlp`` (llava-1.5). SmolLM2's "natural" projector would be
``idefics3`` (SmolVLM-256M = SigLIP + idefics3 connector + SmolLM2-135M), and this
script can write one, but mtmd then inserts the SmolVLM-only tokens
"<fake_token_around_image>" / "<global-img>", which SmolLM2's vocab lacks: they
come out as token id -1 and mtmd_helper_eval_chunks aborts the process. ``mlp``
needs no special tokens; ``gemma3`` is offered to exercise the non-causal image
decode path. All three share one tiny ViT (``v.*`` tensors):

    patch conv (+bias) + learned position embeddings
    -> n_layer x [LN -> MHA (q/k/v/out, with bias) -> residual
                  LN -> FFN (up, GELU, down, with bias) -> residual]
    -> post LN -> projector (mm.*) -> n_embd_text

``write_test_audio_mmproj`` writes an audio-only ``qwen2a`` projector (Whisper
encoder + linear), also verified with SmolLM2.

GGUF keys and tensor names follow tools/mtmd/clip-impl.h / clip.cpp
(``clip_model_loader::load_hparams`` / ``load_tensors``) of the llama.cpp
revision vendored in llama-cpp-python 0.3.36, and were checked by loading the
files with that libmtmd (see scripts/mtmd_smoke.py).

Usage:
    python scripts/make_test_mmproj.py OUT.gguf [--projector mlp|gemma3|idefics3|qwen2a]
                                                [--n-embd 576] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

# Vision tower geometry. Kept tiny so that load + encode cost milliseconds.
IMAGE_SIZE = 64  # clip.vision.image_size (one tile is IMAGE_SIZE x IMAGE_SIZE)
PATCH_SIZE = 8  # clip.vision.patch_size -> (64/8)^2 = 64 patches per tile
SCALE_FACTOR = 2  # clip.vision.projector.scale_factor (pixel shuffle) -> 16 tokens per tile
PREPROC_IMAGE_SIZE = 64  # clip.vision.preproc_image_size (idefics3 "longest_edge")
V_EMBD = 64  # clip.vision.embedding_length
V_FF = 128  # clip.vision.feed_forward_length
V_HEADS = 2  # clip.vision.attention.head_count
V_LAYERS = 2  # clip.vision.block_count
V_EPS = 1e-6  # clip.vision.attention.layer_norm_epsilon
MLP_HIDDEN = 128  # mlp projector: mm.0 output size
GEMMA3_POOL = 4  # gemma3 projector: avg-pool kernel (n_merge) -> (8/4)^2 = 4 tokens


PROJECTORS = ("mlp", "gemma3", "idefics3")


def _tensors(projector: str, n_embd: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random weights. Shapes are numpy order (= reversed ggml ``ne``)."""

    def w(*shape: int, fan_in: int, gain: float = 1.0) -> np.ndarray:
        std = gain / np.sqrt(fan_in)
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def b(n: int) -> np.ndarray:
        return (rng.standard_normal(n) * 0.01).astype(np.float32)

    def ln_w(n: int) -> np.ndarray:
        return (1.0 + rng.standard_normal(n) * 0.01).astype(np.float32)

    n_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    t: dict[str, np.ndarray] = {}
    # --- shared ViT (clip_model_loader::load_tensors, prefix "v") ---
    # conv2d kernel: ggml ne = [PATCH, PATCH, 3, V_EMBD]
    t["v.patch_embd.weight"] = w(
        V_EMBD, 3, PATCH_SIZE, PATCH_SIZE, fan_in=3 * PATCH_SIZE * PATCH_SIZE
    )
    t["v.patch_embd.bias"] = b(V_EMBD)
    # ggml ne = [V_EMBD, n_patches] (no class embedding, so n_pos == n_patches)
    t["v.position_embd.weight"] = (rng.standard_normal((n_patches, V_EMBD)) * 0.02).astype(
        np.float32
    )
    for il in range(V_LAYERS):
        p = f"v.blk.{il}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t[f"{p}.{name}.weight"] = w(V_EMBD, V_EMBD, fan_in=V_EMBD)
            t[f"{p}.{name}.bias"] = b(V_EMBD)
        t[f"{p}.ln1.weight"] = ln_w(V_EMBD)
        t[f"{p}.ln1.bias"] = b(V_EMBD)
        t[f"{p}.ln2.weight"] = ln_w(V_EMBD)
        t[f"{p}.ln2.bias"] = b(V_EMBD)
        t[f"{p}.ffn_up.weight"] = w(V_FF, V_EMBD, fan_in=V_EMBD)  # ne = [V_EMBD, V_FF]
        t[f"{p}.ffn_up.bias"] = b(V_FF)
        t[f"{p}.ffn_down.weight"] = w(V_EMBD, V_FF, fan_in=V_FF)  # ne = [V_FF, V_EMBD]
        t[f"{p}.ffn_down.bias"] = b(V_EMBD)
    t["v.post_ln.weight"] = ln_w(V_EMBD)
    t["v.post_ln.bias"] = b(V_EMBD)

    # --- projector. Output std ~0.05, roughly SmolLM2's token-embedding scale. ---
    if projector == "mlp":
        # llava-1.5 MLP: mm.0 (linear) -> GELU -> mm.2 (linear); clip_n_mmproj_embd = mm.2.bias size
        t["mm.0.weight"] = w(MLP_HIDDEN, V_EMBD, fan_in=V_EMBD)  # ne = [V_EMBD, MLP_HIDDEN]
        t["mm.0.bias"] = b(MLP_HIDDEN)
        t["mm.2.weight"] = w(
            n_embd, MLP_HIDDEN, fan_in=MLP_HIDDEN, gain=0.1
        )  # ne = [MLP_HIDDEN, n_embd]
        t["mm.2.bias"] = b(n_embd)
    elif projector == "gemma3":
        # avg-pool(n_merge) -> RMS norm * soft_emb_norm -> x @ input_projection
        t["mm.soft_emb_norm.weight"] = ln_w(V_EMBD)
        # used as ggml_transpose(w): ggml ne = [n_embd, V_EMBD] -> numpy (V_EMBD, n_embd)
        t["mm.input_projection.weight"] = w(V_EMBD, n_embd, fan_in=V_EMBD, gain=0.05)
    elif projector == "idefics3":
        # pixel shuffle (scale_factor) -> mm.model.fc (no bias); ne = [V_EMBD * s^2, n_embd]
        d_in = V_EMBD * SCALE_FACTOR * SCALE_FACTOR
        t["mm.model.fc.weight"] = w(n_embd, d_in, fan_in=d_in, gain=0.05)
    else:
        raise ValueError(f"projector must be one of {PROJECTORS}, not {projector!r}")
    return t


def write_test_mmproj(
    path: Path, n_embd: int = 576, seed: int = 0, *, projector: str = "mlp"
) -> None:
    """Write a tiny mmproj GGUF with seeded random f32 weights to ``path``.

    ``n_embd`` must equal the text model's input embedding size (576 for SmolLM2-135M),
    otherwise ``mtmd_init_from_file`` refuses the pair.

    ``projector``:
      * ``"mlp"`` (default) - llava-1.5 style. One image -> one chunk of
        (IMAGE_SIZE/PATCH_SIZE)^2 = 64 embeddings, causal decode, no special tokens needed.
      * ``"gemma3"`` - same ViT, avg-pool 4x4 -> 4 embeddings; mtmd wraps the image in the
        text "<start_of_image>" ... "<end_of_image>" (plain text for SmolLM2) and asks for
        NON-causal decode of the image embeddings (mtmd_decode_use_non_causal == true).
      * ``"idefics3"`` - SmolVLM's projector. Loads and encodes fine, but mtmd looks up the
        SmolVLM-only tokens "<fake_token_around_image>" / "<global-img>" in the text vocab;
        SmolLM2 lacks them, so text chunks get token id -1 and mtmd_helper_eval_chunks
        aborts the process (GGML_ASSERT). Only usable with a SmolVLM text model.
    """
    if projector not in PROJECTORS:
        raise ValueError(f"projector must be one of {PROJECTORS}, not {projector!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    writer = gguf.GGUFWriter(str(path), arch="clip")
    writer.add_type(gguf.GGUFType.MMPROJ)  # general.type = "mmproj"
    writer.add_name(f"hearth-test-mmproj-{projector}")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    # --- keys read by clip_model_loader::load_hparams (clip.cpp) ---
    writer.add_clip_has_vision_encoder(True)  # clip.has_vision_encoder
    proj_type = {
        "mlp": "mlp",
        "gemma3": gguf.VisionProjectorType.GEMMA3,
        "idefics3": gguf.VisionProjectorType.IDEFICS3,
    }[projector]
    writer.add_clip_projector_type(proj_type)  # clip.projector_type
    if projector == "mlp":
        writer.add_bool(
            gguf.Keys.Clip.HAS_LLAVA_PROJECTOR, True
        )  # clip.has_llava_projector (gates the MLP)
    writer.add_vision_image_size(IMAGE_SIZE)  # clip.vision.image_size
    writer.add_vision_patch_size(PATCH_SIZE)  # clip.vision.patch_size
    writer.add_vision_embedding_length(V_EMBD)  # clip.vision.embedding_length
    writer.add_vision_feed_forward_length(V_FF)  # clip.vision.feed_forward_length
    writer.add_vision_block_count(V_LAYERS)  # clip.vision.block_count
    writer.add_vision_head_count(V_HEADS)  # clip.vision.attention.head_count
    writer.add_vision_attention_layernorm_eps(V_EPS)  # clip.vision.attention.layer_norm_epsilon
    writer.add_vision_projection_dim(n_embd)  # clip.vision.projection_dim
    writer.add_vision_image_mean([0.5, 0.5, 0.5])  # clip.vision.image_mean (required, >= 3 floats)
    writer.add_vision_image_std([0.5, 0.5, 0.5])  # clip.vision.image_std (required, >= 3 floats)
    writer.add_vision_use_gelu(True)  # clip.use_gelu (else quick-GELU)
    if projector == "idefics3":
        writer.add_vision_projector_scale_factor(SCALE_FACTOR)  # clip.vision.projector.scale_factor
        writer.add_vision_preproc_image_size(PREPROC_IMAGE_SIZE)  # clip.vision.preproc_image_size
    if projector == "gemma3":
        writer.add_vision_projector_scale_factor(
            GEMMA3_POOL
        )  # clip.vision.projector.scale_factor -> n_merge

    for name, arr in _tensors(projector, n_embd, rng).items():
        writer.add_tensor(name, arr)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


A_MEL = 128  # clip.audio.num_mel_bins (qwen2a / whisper-large-v3 use 128)
A_CTX = 1500  # whisper positions: 30 s chunk -> 3000 mel frames -> conv stride 2 -> 1500


def write_test_audio_mmproj(path: Path, n_embd: int = 576, seed: int = 0) -> None:
    """Write a tiny random-weight *audio* mmproj (projector type qwen2a: Whisper encoder + linear).

    Verified to load and run through mtmd_helper_eval_chunks with SmolLM2 (audio input via
    mtmd_bitmap_init_from_audio(n_samples, float32 PCM @ 16 kHz mono)). Caveat: qwen2a pads every
    clip to a 30 s Whisper window, so any clip of <= 30 s becomes 750 embeddings (+ the text
    "<|audio_bos|>"/"<|audio_eos|>" around it): n_ctx per sequence must hold that, and decoding
    750 embeddings through SmolLM2 takes ~5 s on one CPU thread. clip.audio.chunk_size is not
    read for qwen2a.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def w(*shape: int, fan_in: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * gain / np.sqrt(fan_in)).astype(np.float32)

    def b(n: int) -> np.ndarray:
        return (rng.standard_normal(n) * 0.01).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), arch="clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name("hearth-test-mmproj-qwen2a")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_clip_has_audio_encoder(True)  # clip.has_audio_encoder
    writer.add_clip_projector_type(
        gguf.VisionProjectorType.QWEN2A
    )  # clip.projector_type = "qwen2a"
    writer.add_audio_num_mel_bins(A_MEL)  # clip.audio.num_mel_bins
    writer.add_audio_embedding_length(V_EMBD)  # clip.audio.embedding_length
    writer.add_audio_feed_forward_length(V_FF)  # clip.audio.feed_forward_length
    writer.add_audio_block_count(V_LAYERS)  # clip.audio.block_count
    writer.add_audio_head_count(V_HEADS)  # clip.audio.attention.head_count
    writer.add_audio_attention_layernorm_eps(1e-5)  # clip.audio.attention.layer_norm_epsilon
    writer.add_audio_projection_dim(n_embd)  # clip.audio.projection_dim
    writer.add_vision_use_gelu(True)  # clip.use_gelu

    t: dict[str, np.ndarray] = {}
    t["a.conv1d.1.weight"] = w(V_EMBD, A_MEL, 3, fan_in=3 * A_MEL)  # ne = [3, A_MEL, V_EMBD]
    t["a.conv1d.1.bias"] = b(V_EMBD).reshape(V_EMBD, 1)  # ne = [1, V_EMBD]: broadcasts over frames
    t["a.conv1d.2.weight"] = w(V_EMBD, V_EMBD, 3, fan_in=3 * V_EMBD)  # ne = [3, V_EMBD, V_EMBD]
    t["a.conv1d.2.bias"] = b(V_EMBD).reshape(V_EMBD, 1)
    t["a.position_embd.weight"] = (rng.standard_normal((A_CTX, V_EMBD)) * 0.02).astype(np.float32)
    for il in range(V_LAYERS):
        p = f"a.blk.{il}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t[f"{p}.{name}.weight"] = w(V_EMBD, V_EMBD, fan_in=V_EMBD)
            if name != "attn_k":  # whisper: no k bias (the graph asserts it)
                t[f"{p}.{name}.bias"] = b(V_EMBD)
        for ln in ("ln1", "ln2"):
            t[f"{p}.{ln}.weight"] = (1.0 + rng.standard_normal(V_EMBD) * 0.01).astype(np.float32)
            t[f"{p}.{ln}.bias"] = b(V_EMBD)
        t[f"{p}.ffn_up.weight"] = w(V_FF, V_EMBD, fan_in=V_EMBD)
        t[f"{p}.ffn_up.bias"] = b(V_FF)
        t[f"{p}.ffn_down.weight"] = w(V_EMBD, V_FF, fan_in=V_FF)
        t[f"{p}.ffn_down.bias"] = b(V_EMBD)
    t["a.post_ln.weight"] = np.ones(V_EMBD, dtype=np.float32)
    t["a.post_ln.bias"] = b(V_EMBD)
    t["mm.a.fc.weight"] = w(n_embd, V_EMBD, fan_in=V_EMBD, gain=0.05)  # ne = [V_EMBD, n_embd]
    t["mm.a.fc.bias"] = b(n_embd)
    for name, arr in t.items():
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output .gguf path")
    ap.add_argument(
        "--n-embd", type=int, default=576, help="text model embedding size (default 576)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--projector",
        choices=(*PROJECTORS, "qwen2a"),
        default="mlp",
        help="qwen2a writes an audio-only projector",
    )
    args = ap.parse_args(argv)
    if args.projector == "qwen2a":
        write_test_audio_mmproj(args.out, n_embd=args.n_embd, seed=args.seed)
    else:
        write_test_mmproj(args.out, n_embd=args.n_embd, seed=args.seed, projector=args.projector)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
