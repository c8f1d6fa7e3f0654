"""The reference: a bare FastAPI app, served by uvicorn exactly as the service is.

``GET /hello`` → ``{"hello": "world"}``; 1 worker, uvloop, httptools, no access log.
"""

from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}
