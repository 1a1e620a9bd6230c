"""cnnviz's Gradio app: `python app.py` (Hugging Face Spaces runs this file too).

Everything Gradio lives in `cnnviz/app/ui.py`; this file only builds and launches it. Settings come
from the environment: CNNVIZ_WEIGHTS (auto|hub|packaged|random, default auto), CNNVIZ_DEFAULT_MODEL,
CNNVIZ_ALLOW_ANY_MODEL, GRADIO_SERVER_NAME (default 127.0.0.1), GRADIO_SERVER_PORT (default 7860).
"""

from cnnviz.app import ui

demo = ui.build()

if __name__ == "__main__":
    ui.launch(demo)
