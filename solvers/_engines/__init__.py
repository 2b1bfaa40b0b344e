"""The engines behind :func:`solvers.solve`: ``numpy`` (the readable specification),
``numba`` (CPU) and ``cuda`` (``numba.cuda``), the scalar kernels and the stopping rule they
share (:mod:`.kernels`), the operators they iterate over (:mod:`.operators`) and the thread
blocks a batch is split into (:mod:`.blocks`)."""
