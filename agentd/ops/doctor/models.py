"""Doctor checks of the model files (their SHA-256) and the runtimes the models need."""

from __future__ import annotations

from pathlib import Path

from agentd.ops.doctor.findings import Check, Context, fail, ok, warn


def check_models(ctx: Context) -> list[Check]:
    from agentd.errors import ModelError
    from agentd.stages.loading import verify_file

    out = []
    for m in ctx.cfg.models:
        name = f"model {m.name}"
        path, sha = getattr(m, "path", None), getattr(m, "sha256", None)
        if path is None or sha is None:
            out.append(ok(name, f"backend {m.backend} has no file"))
            continue
        try:
            verify_file(Path(path), sha, what=f"model {m.name!r}")
        except ModelError as exc:
            fix = (f"restore {path} from models/ or the release (sha256 {sha[:16]}...); if the new file is intended,"
                   " put its sha256 in the config and reload")
            out.append(fail(name, str(exc).split(";")[0], fix))
        except OSError as exc:
            out.append(fail(name, f"{path}: {exc.strerror}", f"make {path} readable by the service user"))
        else:
            out.append(ok(name, f"{path} matches sha256 {sha[:12]} (version {m.version})"))
    return out


def check_runtimes(ctx: Context) -> list[Check]:
    backends = {m.backend for m in ctx.cfg.models} if ctx.loaded else set()
    out = []
    try:
        import onnxruntime as ort

        out.append(ok("onnxruntime", f"{ort.__version__}, providers {', '.join(ort.get_available_providers())}"))
    except Exception as exc:  # an ImportError, or a broken native library
        check = fail if "onnx" in backends else warn
        out.append(check("onnxruntime", f"cannot import onnxruntime: {exc}", "pip install onnxruntime (in agentd's venv)"))
    try:
        import llama_cpp

        out.append(ok("llama.cpp", f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')}"))
    except Exception as exc:
        if "llama_cpp" in backends:
            out.append(fail("llama.cpp", f"a model uses backend llama_cpp but llama_cpp cannot be imported: {exc}",
                            "pip install 'agentd[llm]' in agentd's venv (or scripts/install.sh, which builds it for this board)"))
        else:
            out.append(ok("llama.cpp", "not installed (optional extra `llm`; no model needs it)"))
    return out
