"""An inference server on release-kit's ModelPool: serves released versions by alias or semver, and follows
aliases through releases and rollbacks without a restart.

    MLFLOW_TRACKING_URI=http://mlflow:5000 uvicorn server:app --host 0.0.0.0 --port 8000

    POST /v1/models/{name}/predict?version=champion   {"inputs": [[...], ...]}  (an alias, or a semver: 1.1.0)
    GET  /v1/models                                  what is loaded, and what each alias points at
    GET  /health

Each response names the version that produced it. Settings (environment): MLFLOW_TRACKING_URI (default:
the embedded store under the working directory), REFRESH_SECONDS (30), MAX_MODELS (8), MAX_BYTES (4GiB),
FACTORIES (for released weights, safetensors or state dicts: "name=package.module:function", comma-separated).
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import semver
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from release_kit.errors import InputError
from release_kit.serving import ModelNotFound, ModelPool, ModelRefused


def factories(setting: str) -> dict[str, str]:
    """FACTORIES ("name=package.module:function", comma-separated) as the pool takes them."""
    pairs = [item.strip() for item in setting.split(",") if item.strip()]
    malformed = [item for item in pairs if not re.fullmatch(r"[^=\s]+=[\w.]+:\w+", item)]
    if malformed:
        print(f"FACTORIES: {malformed[0]!r} is not name=package.module:function", file=sys.stderr)
        raise SystemExit(2)  # bad input, as release-kit's commands say it
    return dict(item.split("=", 1) for item in pairs)


pool = ModelPool(
    os.environ.get("MLFLOW_TRACKING_URI") or None,
    refresh_seconds=float(os.environ.get("REFRESH_SECONDS", "30")),
    max_models=int(os.environ.get("MAX_MODELS", "8")),
    max_bytes=os.environ.get("MAX_BYTES", "4GiB"),
    factories=factories(os.environ.get("FACTORIES", "")),
)
app = FastAPI(title="release-kit serving example")


class PredictRequest(BaseModel):
    inputs: list[list[float]]


@app.post("/v1/models/{name}/predict")
def predict(name: str, request: PredictRequest, version: str = "champion") -> dict:
    reference = f"{name}/{version}" if semver.Version.is_valid(version) else f"{name}@{version}"
    try:
        model = pool.get(reference)
    except ModelNotFound as error:
        raise HTTPException(status_code=404, detail=str(error)) from None
    except ModelRefused as error:  # tampered, unverifiable or blocked: never served
        raise HTTPException(status_code=403, detail=str(error)) from None
    except InputError as error:  # a reference that is not NAME@ALIAS or NAME/SEMVER
        raise HTTPException(status_code=400, detail=str(error)) from None
    try:
        outputs = model.predict(np.asarray(request.inputs, dtype=np.float32))
    except InputError as error:  # inputs the model cannot take
        raise HTTPException(status_code=422, detail=str(error)) from None
    return {"model": name, "version": model.semver, "registry_version": model.version, "outputs": outputs.tolist()}


@app.get("/v1/models")
def models() -> dict:
    return pool.loaded()


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}
