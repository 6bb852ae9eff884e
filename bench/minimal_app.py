"""The least an HTTP service must do for one nn query, to measure `ebr serve` against: FastAPI + uvicorn, the
query tower's featurization and forward pass on a query record built at start-up (no online feature read),
and the FAISS search on the same published index; the answer is the ids and scores, encoded by orjson.

    python -m bench.minimal_app --dataset synthetic-default --pairs pairs.json --port 8001

``pairs.json``: [[query, searcher_id], ...], the requests the load will send (the searchers' online features
are read once, here, at start-up).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before FAISS loads, as `ebr serve` does

from fastapi import FastAPI, Request  # noqa: E402 - at module level: FastAPI resolves the handler's annotations here
from fastapi.responses import Response  # noqa: E402


def create_app(dataset: str, pairs: list[tuple[str, str]], k: int = 10):
    import orjson

    from serving.request import NNRequest
    from serving.retriever import Retriever

    retriever = Retriever.load(dataset, threads=1)
    records = {(q, s): retriever.query_record(NNRequest(q, s, k)) for q, s in pairs}
    model, index = retriever.model, retriever.index
    app = FastAPI()

    @app.post("/search")
    async def search(request: Request):
        body = orjson.loads(await request.body())
        q = model.embed_queries(records[(body["query"], body["searcher_id"])])
        scores, ids = index.search(q, k)
        return Response(orjson.dumps({"ids": ids[0].tolist(), "scores": scores[0].tolist()}),
                        media_type="application/json")

    @app.get("/readyz")
    async def ready():
        return {"ready": True}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic-default")
    p.add_argument("--pairs", required=True)
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args(argv)
    pairs = [tuple(x) for x in json.loads(open(args.pairs).read())]
    uvicorn.run(create_app(args.dataset, pairs), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
