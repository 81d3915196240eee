"""StepX Explorer: the browser app (``stepx explore``, ``stepx serve --explore``).

One room, small modules: ``regions`` parses what a user types or draws into self-attention
queries (pure); ``runs`` holds one run to inspect (generated here or read from a trace) and
renders its maps; ``engine`` loads models and generates with capture; ``live`` forwards the
fan-out's wire bytes to WebSocket clients; ``analysis`` is the seam to the object and
head-relevance packages; ``app`` is the Starlette app that ties them to HTTP; ``static/`` is the
page (plain JavaScript and canvas, no build step, nothing from a CDN).
"""
