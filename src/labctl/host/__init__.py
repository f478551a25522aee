"""The host layer: facts about one machine and the verbs that change it. The subprocess
chokepoint (``proc``), atomic files (``fsio``), the lock, secrets, generations, where files
live (``layout``), the user's systemd manager (``systemd``), runtimes (``provision``),
model downloads (``fetch``) and GGUF files (``gguf_header``, ``gguf_writer``, ``modelfiles``).
It imports the inventory layer and the renderers, never ops/ or cli/."""
