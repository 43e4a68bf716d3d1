#!/usr/bin/env python3
"""Standalone smoke test: image input through libmtmd (llama_cpp.mtmd_cpp) with SmolLM2-135M.

Uses a tiny random-weight idefics3 projector written by make_test_mmproj.py, so the
"answers" are noise; what this proves is that every path is real:

  * mtmd_init_from_file(mmproj, model, params) accepts the projector for the text model
  * mtmd_bitmap_init (raw RGB) and mtmd_helper_bitmap_init_from_buf (PNG bytes)
  * mtmd_tokenize with mtmd_default_marker() -> text/image chunks
  * mtmd_helper_eval_chunks (encode + decode), on seq 0 and on seq 1 of a 2-seq context
  * manual path: mtmd_encode_chunk + mtmd_get_output_embd + llama_decode of a
    llama_batch that carries `embd`, which must give the same logits as the helper
  * greedy sampling of a few tokens afterwards

Usage:
    python scripts/mtmd_smoke.py [--mmproj PATH] [--model PATH] [--threads N] [--verbose]
"""

from __future__ import annotations

import argparse
import ctypes
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import llama_cpp as llama
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_test_mmproj import write_test_mmproj

VERBOSE = False


@llama.llama_log_callback
def _log_cb(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # ggml log levels: 1 debug? 2 info, 3 warn, 4 error, 5 cont (see ggml.h)
    if VERBOSE or level in (3, 4):
        sys.stderr.write(text.decode("utf-8", "replace"))


def png_bytes(rgb: np.ndarray) -> bytes:
    """Minimal 8-bit RGB PNG encoder (no PIL in the venv)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def make_image(kind: str, nx: int = 48, ny: int = 40) -> np.ndarray:
    """HxWx3 uint8, row-major RGBRGB... (the layout mtmd_bitmap_init expects)."""
    y, x = np.mgrid[0:ny, 0:nx]
    if kind == "gradient":
        img = np.stack([x * 255 // (nx - 1), y * 255 // (ny - 1), np.full_like(x, 128)], axis=-1)
    elif kind == "checker":
        c = ((x // 8 + y // 8) % 2) * 255
        img = np.stack([c, 255 - c, (x * 5) % 256], axis=-1)
    else:
        raise ValueError(kind)
    return np.ascontiguousarray(img.astype(np.uint8))


def bitmap_from_rgb(img: np.ndarray) -> int:
    ny, nx, _ = img.shape
    buf = (ctypes.c_uint8 * img.nbytes).from_buffer_copy(img.tobytes())
    bmp = mtmd.mtmd_bitmap_init(nx, ny, buf)  # copies the data
    assert bmp, "mtmd_bitmap_init failed"
    return bmp


def bitmap_from_png(mctx: int, data: bytes) -> int:
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    bmp = mtmd.mtmd_helper_bitmap_init_from_buf(mctx, buf, len(data), False)
    assert bmp, "mtmd_helper_bitmap_init_from_buf failed"
    return bmp


def tokenize(mctx: int, prompt: str, bitmaps: list[int]) -> int:
    chunks = mtmd.mtmd_input_chunks_init()
    raw = prompt.encode()
    text = mtmd.mtmd_input_text(
        raw, len(raw), True, True
    )  # text, text_len, add_special, parse_special
    arr = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
    rc = mtmd.mtmd_tokenize(mctx, chunks, ctypes.byref(text), arr, len(bitmaps))
    assert rc == 0, f"mtmd_tokenize rc={rc}"
    return chunks


def describe_chunks(chunks: int) -> list[dict]:
    out = []
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        ch = mtmd.mtmd_input_chunks_get(chunks, i)
        typ = mtmd.mtmd_input_chunk_get_type(ch)
        d = {
            "i": i,
            "type": {0: "text", 1: "image", 2: "audio"}[typ],
            "n_tokens": mtmd.mtmd_input_chunk_get_n_tokens(ch),
            "n_pos": mtmd.mtmd_input_chunk_get_n_pos(ch),
        }
        if typ == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            toks = mtmd.mtmd_input_chunk_get_tokens_text(ch, ctypes.byref(n))
            d["tokens"] = [toks[k] for k in range(n.value)]
        else:
            it = mtmd.mtmd_input_chunk_get_tokens_image(ch)
            d["img_n_tokens"] = mtmd.mtmd_image_tokens_get_n_tokens(it)
            d["img_nx"] = mtmd.mtmd_image_tokens_get_nx(it)
            d["img_ny"] = mtmd.mtmd_image_tokens_get_ny(it)
            d["img_n_pos"] = mtmd.mtmd_image_tokens_get_n_pos(it)
        out.append(d)
    return out


def logits_last(lctx: int, n_vocab: int) -> np.ndarray:
    ptr = llama.llama_get_logits_ith(lctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()


def greedy(lctx: int, vocab: int, n_vocab: int, n_past: int, seq_id: int, n: int) -> list[int]:
    batch = llama.llama_batch_init(1, 0, 1)
    out = []
    try:
        for _ in range(n):
            tok = int(np.argmax(logits_last(lctx, n_vocab)))
            out.append(tok)
            if llama.llama_vocab_is_eog(vocab, tok):
                break
            batch.n_tokens = 1
            batch.token[0] = tok
            batch.pos[0] = n_past
            batch.n_seq_id[0] = 1
            batch.seq_id[0][0] = seq_id
            batch.logits[0] = 1
            assert llama.llama_decode(lctx, batch) == 0
            n_past += 1
    finally:
        llama.llama_batch_free(batch)
    return out


def detok(vocab: int, toks: list[int]) -> str:
    buf = ctypes.create_string_buffer(256)
    s = b""
    for t in toks:
        n = llama.llama_token_to_piece(vocab, t, buf, len(buf), 0, False)
        s += buf.raw[: max(n, 0)]
    return s.decode("utf-8", "replace")


def eval_helper(mctx, lctx, chunks, seq_id: int, n_past: int, n_batch: int) -> int:
    new_n_past = llama.llama_pos(0)
    rc = mtmd.mtmd_helper_eval_chunks(
        mctx, lctx, chunks, n_past, seq_id, n_batch, True, ctypes.byref(new_n_past)
    )
    assert rc == 0, f"mtmd_helper_eval_chunks rc={rc}"
    return new_n_past.value


def _decode_pieces(
    lctx, n: int, n_batch: int, fill, want_last_logits: bool, embd_dim: int = 0
) -> None:
    """llama_decode n items in pieces of <= n_batch (a bigger batch trips
    GGML_ASSERT(n_tokens_all <= cparams.n_batch) and aborts the process)."""
    b = llama.llama_batch_init(
        n_batch, embd_dim, 1
    )  # embd_dim != 0 -> batch.embd allocated, batch.token NULL
    try:
        for off in range(0, n, n_batch):
            m = min(n_batch, n - off)
            b.n_tokens = m
            for k in range(m):
                fill(b, k, off + k)
                b.n_seq_id[k] = 1
                b.logits[k] = 1 if (want_last_logits and off + k == n - 1) else 0
            assert llama.llama_decode(lctx, b) == 0
    finally:
        llama.llama_batch_free(b)


def eval_manual(
    mctx, lctx, chunks, seq_id: int, n_past: int, n_embd: int, n_batch: int, timings: list[float]
) -> int:
    """Text chunks via token batches, image chunks via mtmd_encode_chunk + embd batches."""
    n_chunks = mtmd.mtmd_input_chunks_size(chunks)
    for i in range(n_chunks):
        ch = mtmd.mtmd_input_chunks_get(chunks, i)
        last = i == n_chunks - 1
        if mtmd.mtmd_input_chunk_get_type(ch) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            toks = mtmd.mtmd_input_chunk_get_tokens_text(ch, ctypes.byref(n))

            def fill_tok(b, k, j, toks=toks, p0=n_past):
                b.token[k] = toks[j]
                b.pos[k] = p0 + j
                b.seq_id[k][0] = seq_id

            _decode_pieces(lctx, n.value, n_batch, fill_tok, last)
            n_past += n.value
        else:
            t0 = time.perf_counter()
            assert mtmd.mtmd_encode_chunk(mctx, ch) == 0
            timings.append(time.perf_counter() - t0)
            n_tok = mtmd.mtmd_input_chunk_get_n_tokens(ch)
            # float[n_tok * n_embd], row-major per token; owned by mctx, valid until the next encode
            embd = mtmd.mtmd_get_output_embd(mctx)
            row = n_embd * ctypes.sizeof(ctypes.c_float)

            def fill_embd(b, k, j, embd=embd, p0=n_past, row=row):
                ctypes.memmove(
                    ctypes.addressof(b.embd.contents) + k * row,
                    ctypes.addressof(embd.contents) + j * row,
                    row,
                )
                b.pos[k] = p0 + j  # no M-RoPE: one position per embedding
                b.seq_id[k][0] = seq_id

            non_causal = mtmd.mtmd_decode_use_non_causal(mctx, ch)
            if non_causal:
                # all image embeddings must see each other: they have to fit in one ubatch
                assert n_tok <= llama.llama_n_ubatch(lctx), (
                    "non-causal image needs n_ubatch >= n_tokens"
                )
                llama.llama_set_causal_attn(lctx, False)
            try:
                _decode_pieces(lctx, n_tok, n_batch, fill_embd, last, embd_dim=n_embd)
            finally:
                if non_causal:
                    llama.llama_set_causal_attn(lctx, True)
            n_past += mtmd.mtmd_input_chunk_get_n_pos(ch)
    return n_past


def main() -> int:
    global VERBOSE
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--mmproj", type=Path, default=None, help="default: write a fresh one to a temp dir"
    )
    ap.add_argument("--model", type=Path, default=None, help="default: hearth's embedded SmolLM2")
    ap.add_argument(
        "--projector",
        choices=("mlp", "gemma3", "idefics3"),
        default="mlp",
        help="projector type for the generated mmproj (ignored with --mmproj)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-batch", type=int, default=256)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    VERBOSE = args.verbose

    if args.model is None:
        from hearth.models.registry import embedded_model_path

        args.model = Path(embedded_model_path())
    tmpdir = None
    if args.mmproj is None:
        tmpdir = tempfile.TemporaryDirectory()
        args.mmproj = Path(tmpdir.name) / "test-mmproj.gguf"
        write_test_mmproj(args.mmproj, projector=args.projector)
    print(
        f"llama_cpp {llama.__version__}; mmproj {args.mmproj} ({args.mmproj.stat().st_size} bytes)"
    )

    llama.llama_log_set(_log_cb, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(_log_cb, ctypes.c_void_p(0))  # also sets mtmd_log_set
    llama.llama_backend_init()

    caps = mtmd.mtmd_get_cap_from_file(str(args.mmproj).encode())
    print(f"mtmd_get_cap_from_file: vision={caps.inp_vision} audio={caps.inp_audio}")

    mparams = llama.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = llama.llama_model_load_from_file(str(args.model).encode(), mparams)
    assert model, "model load failed"
    vocab = llama.llama_model_get_vocab(model)
    n_vocab = llama.llama_vocab_n_tokens(vocab)
    n_embd = llama.llama_model_n_embd_inp(model)

    cparams = llama.llama_context_default_params()
    cparams.n_ctx = 1024
    cparams.n_batch = args.n_batch
    cparams.n_ubatch = args.n_batch
    cparams.n_seq_max = 2
    cparams.kv_unified = False
    cparams.n_threads = args.threads
    cparams.n_threads_batch = args.threads
    cparams.no_perf = True
    lctx = llama.llama_init_from_model(model, cparams)
    assert lctx, "context creation failed"
    mem = llama.llama_get_memory(lctx)

    p = mtmd.mtmd_context_params_default()
    p.use_gpu = False
    p.n_threads = args.threads
    p.print_timings = False
    p.warmup = True
    t0 = time.perf_counter()
    mctx = mtmd.mtmd_init_from_file(str(args.mmproj).encode(), model, p)
    assert mctx, "mtmd_init_from_file failed"
    print(
        f"mtmd_init_from_file ok in {1000 * (time.perf_counter() - t0):.1f} ms; "
        f"vision={mtmd.mtmd_support_vision(mctx)} audio={mtmd.mtmd_support_audio(mctx)} "
        f"mrope={mtmd.mtmd_decode_use_mrope(mctx)} marker={mtmd.mtmd_default_marker().decode()!r}"
    )

    marker = mtmd.mtmd_default_marker().decode()
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{marker}What is in this picture?<|im_end|>\n<|im_start|>assistant\n"
    )

    img_a = make_image("gradient")
    img_b = make_image("checker")
    bmp_a = bitmap_from_rgb(img_a)
    bmp_b = bitmap_from_rgb(img_b)
    bmp_a_png = bitmap_from_png(mctx, png_bytes(img_a))
    print(
        f"bitmap A raw: {mtmd.mtmd_bitmap_get_nx(bmp_a)}x{mtmd.mtmd_bitmap_get_ny(bmp_a)} "
        f"{mtmd.mtmd_bitmap_get_n_bytes(bmp_a)} bytes; from PNG: "
        f"{mtmd.mtmd_bitmap_get_nx(bmp_a_png)}x{mtmd.mtmd_bitmap_get_ny(bmp_a_png)}"
    )
    raw_png = np.ctypeslib.as_array(mtmd.mtmd_bitmap_get_data(bmp_a_png), shape=(img_a.nbytes,))
    print(f"PNG-decoded pixels == raw pixels: {np.array_equal(raw_png, img_a.reshape(-1))}")

    chunks_a = tokenize(mctx, prompt, [bmp_a])
    chunks_b = tokenize(mctx, prompt, [bmp_b])
    chunks_a_png = tokenize(mctx, prompt, [bmp_a_png])
    desc = describe_chunks(chunks_a)
    for d in desc:
        if d["type"] == "text":
            valid = [t for t in d["tokens"] if t >= 0]
            print(
                f"  chunk {d['i']}: text  n_tokens={d['n_tokens']} n_pos={d['n_pos']} "
                f"invalid(-1) tokens={len(d['tokens']) - len(valid)} text={detok(vocab, valid)!r}"
            )
        else:
            print(
                f"  chunk {d['i']}: image n_tokens={d['n_tokens']} n_pos={d['n_pos']} "
                f"(image_tokens: n_tokens={d['img_n_tokens']} nx={d['img_nx']} "
                f"ny={d['img_ny']} n_pos={d['img_n_pos']})"
            )
    n_img_chunks = sum(d["type"] == "image" for d in desc)
    print(
        f"total: n_chunks={len(desc)} image_chunks={n_img_chunks} "
        f"image_tokens={sum(d['n_tokens'] for d in desc if d['type'] == 'image')} "
        f"helper_get_n_tokens={mtmd.mtmd_helper_get_n_tokens(chunks_a)} "
        f"helper_get_n_pos={mtmd.mtmd_helper_get_n_pos(chunks_a)}"
    )
    for d in desc:
        if d["type"] == "image":
            ch = mtmd.mtmd_input_chunks_get(chunks_a, d["i"])
            nc = mtmd.mtmd_decode_use_non_causal(mctx, ch)
            print(f"  mtmd_decode_use_non_causal(chunk {d['i']}) = {nc}")

    n_invalid = sum(t < 0 for d in desc if d["type"] == "text" for t in d["tokens"])
    if n_invalid:
        # mtmd fills special tokens it cannot find in the text vocab with LLAMA_TOKEN_NULL (-1);
        # llama_decode / mtmd_helper_eval_chunks would then abort the whole process.
        print(
            f"ABORTING SMOKE: {n_invalid} token(s) == -1 in text chunks "
            "(the projector needs special tokens this vocab lacks)"
        )
        return 2

    results = {}
    # 1) helper path, seq 0
    for name, ch in (
        ("A", chunks_a),
        ("B", chunks_b),
        ("A_again", chunks_a),
        ("A_png", chunks_a_png),
    ):
        llama.llama_memory_clear(mem, True)
        t0 = time.perf_counter()
        n_past = eval_helper(mctx, lctx, ch, seq_id=0, n_past=0, n_batch=args.n_batch)
        dt = time.perf_counter() - t0
        lg = logits_last(lctx, n_vocab)
        gen = greedy(lctx, vocab, n_vocab, n_past, 0, 8)
        results[name] = lg
        print(
            f"helper eval {name}: n_past={n_past} in {1000 * dt:.0f} ms; "
            f"argmax={int(np.argmax(lg))} "
            f"greedy={detok(vocab, gen)!r}"
        )

    # 2) multi-sequence: A on seq 0, then B on seq 1 (independent positions from 0)
    llama.llama_memory_clear(mem, True)
    n0 = eval_helper(mctx, lctx, chunks_a, seq_id=0, n_past=0, n_batch=args.n_batch)
    lg_seq0 = logits_last(lctx, n_vocab)
    n1 = eval_helper(mctx, lctx, chunks_b, seq_id=1, n_past=0, n_batch=args.n_batch)
    lg_seq1 = logits_last(lctx, n_vocab)
    print(
        f"multi-seq: seq0 n_past={n0} pos_max={llama.llama_memory_seq_pos_max(mem, 0)}, "
        f"seq1 n_past={n1} pos_max={llama.llama_memory_seq_pos_max(mem, 1)}"
    )

    # 3) manual path: mtmd_encode_chunk + mtmd_get_output_embd + llama_batch.embd
    llama.llama_memory_clear(mem, True)
    enc_t: list[float] = []
    n_past_m = eval_manual(
        mctx, lctx, chunks_a, seq_id=0, n_past=0, n_embd=n_embd, n_batch=args.n_batch, timings=enc_t
    )
    lg_manual = logits_last(lctx, n_vocab)
    print(
        f"manual eval A: n_past={n_past_m}; mtmd_encode_chunk per image chunk: "
        + ", ".join(f"{1000 * t:.1f} ms" for t in enc_t)
    )
    # timing of a single encode, repeated
    img_desc = next(d for d in desc if d["type"] == "image")
    img_chunk = mtmd.mtmd_input_chunks_get(chunks_a, img_desc["i"])
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        assert mtmd.mtmd_encode_chunk(mctx, img_chunk) == 0
        ts.append(time.perf_counter() - t0)
    print(
        f"mtmd_encode_chunk (one {img_desc['n_tokens']}-token chunk, {args.threads} thread(s)): "
        f"median {1000 * sorted(ts)[2]:.2f} ms over 5"
    )

    def diff(x, y):
        return float(np.max(np.abs(x - y)))

    print("--- checks ---")
    checks = {
        "A vs B logits differ": diff(results["A"], results["B"]) > 1e-3,
        "A vs A_again identical": diff(results["A"], results["A_again"]) == 0.0,
        "A raw vs A from PNG identical": diff(results["A"], results["A_png"]) == 0.0,
        "seq0 (multi-seq ctx) == single-seq A": diff(lg_seq0, results["A"]) < 1e-3,
        "seq1 (multi-seq ctx) == single-seq B": diff(lg_seq1, results["B"]) < 1e-3,
        "manual embd path == helper path": diff(lg_manual, results["A"]) < 1e-3,
    }
    r = results
    print(
        f"max|A-B|={diff(r['A'], r['B']):.4f} max|A-A_again|={diff(r['A'], r['A_again']):.2e} "
        f"max|A-A_png|={diff(r['A'], r['A_png']):.2e} max|seq0-A|={diff(lg_seq0, r['A']):.2e} "
        f"max|seq1-B|={diff(lg_seq1, r['B']):.2e} max|manual-helper|={diff(lg_manual, r['A']):.2e}"
    )
    for k, v in checks.items():
        print(f"{'PASS' if v else 'FAIL'}: {k}")

    for c in (chunks_a, chunks_b, chunks_a_png):
        mtmd.mtmd_input_chunks_free(c)
    for b in (bmp_a, bmp_b, bmp_a_png):
        mtmd.mtmd_bitmap_free(b)
    mtmd.mtmd_free(mctx)
    llama.llama_free(lctx)
    llama.llama_model_free(model)
    if tmpdir is not None:
        tmpdir.cleanup()
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
