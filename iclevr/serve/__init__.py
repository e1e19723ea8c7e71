"""`iclevr serve`: a local web page to compose a scene and watch it being denoised.

  request.py  what the page may ask for (GenerateRequest) and the readable message for anything else
  jobs.py     the queue: one generation at a time in a worker thread, positions, cancellation
  engine.py   the loaded model and evaluator; one request -> live frames, final PNGs, trace GIFs, verdicts
  app.py      the ASGI app (starlette) and the uvicorn server; page.html is the page, no network assets

Only app.py needs the optional `serve` extra (starlette, uvicorn); the rest is tested without a server.
"""
