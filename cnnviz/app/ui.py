"""The Gradio app (Explain, Compare, Methods, Support). All of cnnviz's Gradio code lives here.

Gradio's API moves between majors (6.x moved ``theme``/``css`` from ``Blocks()`` to ``launch()``),
so nothing else imports Gradio: `app.py` only calls `build` and `launch`. The computing lives in
`cnnviz.app.settings` and `cnnviz.app.results`, which raise `ValueError`; the handlers here turn
that into `gr.Error`.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import gradio as gr
from PIL import Image

import cnnviz
from cnnviz import render
from cnnviz.app import guard, models, results, ui_evaluate
from cnnviz.app import settings as core
from cnnviz.app.widgets import (
    MODEL_EVENTS,
    PROGRESS,
    image_input,
    model_dropdown,
    user_errors,
)

LATEX: list[dict[str, str | bool]] = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
]
CSS = """
#cnnviz-banner {background: #fff4e5; border-left: 4px solid #f59e0b; padding: 8px 12px;}
#cnnviz-gallery .thumbnail-lg {aspect-ratio: auto !important; height: auto !important;
  display: flex !important; flex-direction: column; overflow: visible;}
#cnnviz-gallery .thumbnail-lg > img {aspect-ratio: 1 / 1; height: auto !important;}
#cnnviz-gallery .caption-label {position: static !important; max-width: none !important;
  white-space: normal; font-size: 12px; opacity: 1 !important; border: none; border-radius: 0;
  border-top: 1px solid var(--border-color-primary); overflow-wrap: anywhere;}
@media (max-width: 640px) {#cnnviz-gallery .grid-container {
  grid-template-columns: repeat(2, minmax(0, 1fr)) !important;}}
@media (max-width: 440px) {#cnnviz-gallery .grid-container {
  grid-template-columns: minmax(0, 1fr) !important;}}
#cnnviz-gallery .gallery-container {height: auto !important;}
#cnnviz-gallery .grid-wrap.fixed-height {min-height: 0 !important; height: auto !important;
  max-height: none !important;}
.cnnviz-badge {display: inline-block; padding: 2px 10px; border-radius: 999px; font-weight: 600;}
.cnnviz-ok {background: #dcfce7; color: #166534;}
.cnnviz-warn {background: #fef3c7; color: #92400e;}
"""
PREDICTIONS = "Top-5 predictions"


def field_of(component: Any) -> guard.Field | None:
    """The bounds of a component's input value, from its own settings (choices, range, kind)."""
    label = getattr(component, "label", None) or type(component).__name__
    values = tuple(v for _, v in getattr(component, "choices", None) or [])
    if isinstance(component, gr.Dropdown):
        initial = component.value if isinstance(component.value, list) else [component.value]
        choices = None if component.allow_custom_value else (*values, *initial)
        return guard.Field(label, "texts" if component.multiselect else "text", choices=choices)
    if isinstance(component, gr.CheckboxGroup):
        return guard.Field(label, "texts", choices=values)
    if isinstance(component, gr.Radio):
        return guard.Field(label, "text", choices=values)
    if isinstance(component, gr.Textbox):
        return guard.Field(label, "text")
    if isinstance(component, gr.Slider | gr.Number):
        return guard.Field(label, "number", low=component.minimum, high=component.maximum)
    if isinstance(component, gr.Checkbox):
        return guard.Field(label, "flag")
    return None


def guard_inputs(demo: gr.Blocks, gate: guard.FileGate) -> None:
    """Check every input of every event before Gradio moves, fetches, opens or echoes any of it.

    File references must resolve inside Gradio's upload cache (`guard.FileGate`): Gradio copies a
    referenced file, or downloads a URL, before any component sees it, and refuses some references
    in its own words (naming the path). Checking the raw request first gives every bad reference
    the same answer, keeps the server from fetching anything, and covers file inputs that later
    components add. Text, lists, numbers and flags are bounded by `field_of`: Gradio's own checks
    quote a wrong value whole (a megabyte string comes back) and list every choice. Every refusal
    is one plain sentence. (`Blocks.preprocess_data` is where Gradio 6 turns a request's values
    into handler arguments, for the queue and for ``/gradio_api/call`` alike.)
    """
    original = demo.preprocess_data

    async def checked(block_fn: Any, inputs: list[Any], *args: Any, **kwargs: Any) -> Any:
        state = args[0] if args else kwargs.get("state")
        try:
            if not isinstance(inputs, list) or len(inputs) < len(block_fn.inputs):
                raise guard.Refused(f"This request needs {len(block_fn.inputs)} input values.")
            props = set(getattr(block_fn, "component_prop_inputs", None) or ())
            for i, (block, payload) in enumerate(zip(block_fn.inputs, inputs, strict=False)):
                guard.check_references(payload, gate)
                if getattr(block, "stateful", False) or i in props:
                    continue
                if state is not None and block._id in state:
                    block = state[block._id]  # the session's copy, with its updated choices
                field = field_of(block)
                if field is not None:
                    field.check(payload)
        except guard.Refused as err:
            raise gr.Error(str(err), title="Input refused") from None
        return await original(block_fn, inputs, *args, **kwargs)

    demo.preprocess_data = functools.update_wrapper(checked, original)  # type: ignore[method-assign]


def describe_free_text(demo: gr.Blocks) -> None:
    """Document dropdowns that take typed values (a model name, a class, a layer) as strings.

    Gradio describes a dropdown to API users by its current choices, so the target class read as
    the single literal ``'top-1 (predicted class)'``; such inputs take any text (checked by the
    handlers), and their API description now says so.
    """
    for block in demo.blocks.values():
        if isinstance(block, gr.Dropdown) and block.allow_custom_value:
            text = {"type": "string"}
            schema = {"type": "array", "items": text} if block.multiselect else text
            block.api_info = functools.partial(dict, schema)  # type: ignore[method-assign]


class App:
    """Holds the deployment's settings, the model pool and the download folder; handlers are methods."""

    def __init__(self, settings: core.AppSettings):
        self.settings = settings
        self.pool = models.ModelPool(settings.weights, settings.max_model_mb)
        self.archives = results.ArchiveDir()
        self.gate = guard.FileGate([gr.utils.get_upload_folder()])  # the page's examples are copied there

    def model(self, name: str | None, progress: gr.Progress | None = None):
        resolved = core.resolve_model(name, self.settings)
        if progress is not None:
            progress(0.05, desc=f"loading {resolved}")
        return self.pool.get(resolved)

    def banner(self, models: list | tuple = ()) -> dict:
        """Which models are trained and which random (`core.weights_banner`); hidden when all is well."""
        text = core.weights_banner(self.settings, models)
        return gr.update(value=text, visible=bool(text))

    # -- Explain tab ---------------------------------------------------------------------------
    def on_model(self, name: str, selected: list[str] | None, progress=PROGRESS):
        """A model was chosen: offer its methods, layers and classes, and show its anatomy."""
        model, _ = self.model(name, progress)
        choices, refused = core.method_status(model.anatomy, model.default_layer)
        return (
            gr.update(choices=choices, value=core.kept_methods(selected, refused)),
            core.refused_markdown(refused),
            gr.update(
                choices=[core.FINAL_LABEL, *model.anatomy.stages],
                value=model.default_layer or core.FINAL_LABEL,
            ),
            gr.update(choices=core.class_choices(model.class_names), value=core.TOP1),
            core.anatomy_markdown(model),
            self.banner([model]),
        )

    def on_layer(self, name: str, layer: str, selected: list[str] | None):
        """A layer was chosen: some methods (CAM) only apply at the final map."""
        model, _ = self.model(name)
        chosen = core.parse_layer(layer, model.anatomy)
        choices, refused = core.method_status(model.anatomy, chosen)
        methods = gr.update(choices=choices, value=core.kept_methods(selected, refused))
        return methods, core.refused_markdown(refused)

    def explain(
        self,
        image: Image.Image | None,
        model_name: str,
        methods: list[str],
        target: str,
        layer: str,
        colormap: str,
        alpha: float,
        *param_values: Any,
        progress=PROGRESS,
    ):
        """Explain one image: top-5 predictions, one overlay per method, the anatomy and a zip.

        `param_values`: the method parameter components' values, in `core.param_specs()` order
        (absent: every parameter at its default)."""
        picture = core.prepare_image(image)
        chosen = [cnnviz.get_method(m).id for m in methods or []]
        params = core.request_params(chosen, param_values, self.settings)
        model, lock = self.model(model_name, progress)
        if colormap not in render.COLORMAPS:
            raise ValueError(f"colormap {colormap!r} is not one of {', '.join(render.COLORMAPS)}")
        target_idx = core.parse_target(target, model.class_names)
        layer_name = core.parse_layer(layer, model.anatomy)
        progress(0.3, desc="explaining")
        with lock:
            result = results.explain_one(
                model,
                picture,
                chosen,
                target_idx,
                layer_name,
                colormap,
                float(alpha),
                self.archives.new_zip(f"cnnviz-{model.name}"),
                params=params,
            )
        return (
            results.label_dict(result.top),
            [
                (self.archives.save_png(img, f"{model.name}-{i}"), cap)
                for i, (img, cap) in enumerate(result.gallery)
            ],
            core.anatomy_markdown(model),
            result.notes,
            str(result.archive),
            list(result.top),
        )

    def weights_notice(self, name: str):
        """After an explanation: the weights' origin on the predictions panel, and the banner."""
        model, _ = self.model(name)
        return gr.update(label=PREDICTIONS + models.weights_note(model)), self.banner([model])

    def compare_notice(self, names: list[str]):
        """After a comparison: the banner names the models that run on random weights."""
        return self.banner([self.model(n)[0] for n in names or []])

    def pick_target(self, top: list, evt: gr.SelectData):
        """A click on a predicted class makes it the target class."""
        for index, name, _prob in top or []:
            if evt.value in (models.short_name(name), f"{models.short_name(name)} (#{index})"):
                return f"{index} · {name}"
        return core.TOP1

    # -- Compare tab ---------------------------------------------------------------------------
    def compare(
        self,
        image: Image.Image | None,
        models: list[str],
        methods: list[str],
        colormap: str,
        alpha: float,
        shared_scale: bool,
        progress=PROGRESS,
    ):
        """Several models x several methods on one image, as one grid (top-1 target, final map)."""
        picture = core.prepare_image(image)
        names = list(dict.fromkeys(core.resolve_model(m, self.settings) for m in models or []))
        if not names:
            raise ValueError("choose at least one model to compare")
        if len(names) > self.settings.max_compare:
            raise ValueError(f"choose at most {self.settings.max_compare} models (got {len(names)})")
        if not methods:
            raise ValueError("choose at least one method")
        method_ids = [cnnviz.get_method(m).id for m in methods]
        params = core.bounded_params(method_ids, {}, self.settings)  # defaults within the limits
        rows = results.run_compare(
            self.pool, names, picture, method_ids, lambda f, d: progress(f, desc=d), params
        )
        grid, pictures, arrays = results.compare_grid(
            rows, method_ids, colormap, float(alpha), bool(shared_scale)
        )
        table = results.compare_table(rows)
        meta = {
            "models": names,
            "weights": {row.model.name: row.model.weights_source for row in rows},
            "weights_origin": {row.model.name: row.model.weights_origin for row in rows},
            "methods": method_ids,
            "shared_scale": bool(shared_scale),
        }
        archive = results.write_zip(self.archives.new_zip("cnnviz-compare"), arrays, pictures, meta)
        return self.archives.save_png(grid, "cnnviz-compare"), table, str(archive)


def _explain_tab(app: App, banner: gr.Markdown, demo: gr.Blocks) -> None:
    methods = cnnviz.list_methods()
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            image = image_input(app.gate, label="Image", height=300, elem_id="cnnviz-image")
            examples = gr.Examples(
                core.example_paths(), inputs=[image], cache_examples=False, label="Examples"
            )
            model = model_dropdown(app.settings, "Model", value=app.settings.default_model)
            method_box = gr.CheckboxGroup(
                [(m.label, m.id) for m in methods],
                value=core.default_methods([m.id for m in methods]),
                label="Methods",
                info="Methods marked n/a do not apply to this model and layer (reasons below)",
                elem_id="cnnviz-methods",
            )
            refused = gr.Markdown(elem_id="cnnviz-refused")
            with gr.Accordion("Target, layer and colours", open=False):
                target = gr.Dropdown(
                    [core.TOP1],
                    value=core.TOP1,
                    label="Target class",
                    info="Top-1 by default; click a prediction or search any class by name",
                    filterable=True,
                    allow_custom_value=True,  # the API may pass an index or a name; parse_target checks it
                )
                layer = gr.Dropdown(
                    [core.FINAL_LABEL],
                    value=core.FINAL_LABEL,
                    label="Layer (CAM family)",
                    allow_custom_value=True,
                )
                colormap = gr.Dropdown(list(render.COLORMAPS), value=render.COLORMAPS[0], label="Colormap")
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay strength")
            param_inputs = _param_accordions(app.settings)
            run = gr.Button("Explain", variant="primary", elem_id="cnnviz-explain")
        with gr.Column(scale=3, min_width=360):
            gallery = gr.Gallery(
                label="Overlays",
                show_label=False,  # Gradio draws the label over the first picture
                columns=3,
                object_fit="contain",
                format="png",
                elem_id="cnnviz-gallery",
            )
            with gr.Row():
                predictions = gr.Label(num_top_classes=5, label=PREDICTIONS, elem_id="cnnviz-predictions")
                with gr.Column():
                    anatomy = gr.Markdown(label="Anatomy", elem_id="cnnviz-anatomy")
            notes = gr.Markdown(label="Method notes")
            download = gr.File(label="Download: raw maps (.npy), images (.png), meta.json")
            evaluate_panel = ui_evaluate.EvaluatePanel()
    top_state = gr.State([])

    model_outputs = [method_box, refused, layer, target, anatomy, banner]
    on_model: dict[str, Any] = dict(
        fn=user_errors(app.on_model),
        inputs=[model, method_box],
        outputs=model_outputs,
        api_visibility="undocumented",
        concurrency_id=MODEL_EVENTS,
        show_progress_on=[anatomy],  # "loading <model>" over the anatomy panel, not over the short notes
    )
    model.change(**on_model)
    demo.load(**on_model)
    layer.input(
        user_errors(app.on_layer),
        [model, layer, method_box],
        [method_box, refused],
        api_visibility="undocumented",
        show_progress="hidden",  # instant: an overlay would only flicker over the notes
    )

    explain_inputs = [image, model, method_box, target, layer, colormap, alpha, *param_inputs]
    explain_outputs = [predictions, gallery, anatomy, notes, download, top_state]

    def then_explain(event: Any, **kwargs: Any) -> None:
        event.then(
            user_errors(app.explain), explain_inputs, explain_outputs, concurrency_id=MODEL_EVENTS, **kwargs
        ).success(
            user_errors(app.weights_notice), [model], [predictions, banner], api_visibility="undocumented"
        )

    run.click(
        user_errors(app.explain),
        explain_inputs,
        explain_outputs,
        api_name="explain",
        concurrency_id=MODEL_EVENTS,
    ).success(user_errors(app.weights_notice), [model], [predictions, banner], api_visibility="undocumented")
    evaluate_panel.wire(app, explain_inputs, explain_outputs)
    then_explain(examples.load_input_event, api_visibility="undocumented")
    then_explain(
        predictions.select(app.pick_target, [top_state], [target], api_visibility="undocumented"),
        api_visibility="undocumented",
    )


def _param_component(
    method: cnnviz.Method, p: cnnviz.methods.Param, settings: core.AppSettings
) -> gr.components.Component:
    """One input for a method parameter, typed and bounded as the registry declares it (costly
    ones within the deployment's limits, `core.param_high`)."""
    label, info = p.name, p.help
    elem_id = f"cnnviz-param-{method.id}-{p.name}"
    if p.choices:
        return gr.Dropdown(list(p.choices), value=p.default, label=label, info=info, elem_id=elem_id)
    if isinstance(p.default, bool):
        return gr.Checkbox(value=p.default, label=label, info=info, elem_id=elem_id)
    high = core.param_high(p, settings)
    value = cast(float, p.default)  # an int or a float: the branches above took the rest
    if high is not None and high != p.high:
        info += f" (at most {high:g} here)"
        value = min(value, high)
    return gr.Number(
        value=value,
        label=label,
        info=info,
        minimum=p.low,
        maximum=high,
        precision=0 if isinstance(p.default, int) else None,
        elem_id=elem_id,
    )


def _param_accordions(settings: core.AppSettings) -> list[gr.components.Component]:
    """An accordion per method that has parameters (from the registry), closed; their inputs in
    `core.param_specs()` order."""
    inputs = []
    with gr.Accordion("Method parameters", open=False, elem_id="cnnviz-params"):
        for method in cnnviz.list_methods():
            if not method.params:
                continue
            with gr.Accordion(method.label, open=False):
                inputs += [_param_component(method, p, settings) for p in method.params]
    return inputs


def _compare_tab(app: App, banner: gr.Markdown) -> None:
    default_models = core.compare_defaults(app.settings.default_model)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            image = image_input(app.gate, label="Image", height=260, elem_id="cnnviz-compare-image")
            gr.Examples(core.example_paths(), inputs=[image], cache_examples=False, label="Examples")
            models = model_dropdown(
                app.settings, f"Models (up to {app.settings.max_compare})", True, default_models
            )
            methods = gr.CheckboxGroup(
                [(m.label, m.id) for m in cnnviz.list_methods()],
                value=core.default_methods([m.id for m in cnnviz.list_methods()]),
                label="Methods",
                info="A method that does not apply to a model shows a grey tile with the reason",
            )
            with gr.Row():
                colormap = gr.Dropdown(list(render.COLORMAPS), value=render.COLORMAPS[0], label="Colormap")
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay strength")
            shared = gr.Checkbox(
                value=False,
                label="One colour scale per method across models",
                info="Off: each map uses its own range, to compare where the models look. On: each "
                "method's maps share one range, to compare how strong they are (a colour bar "
                "under the grid gives the values).",
            )
            run = gr.Button("Compare", variant="primary", elem_id="cnnviz-compare")
        with gr.Column(scale=3, min_width=360):
            grid = gr.Image(
                label="Models × methods", type="pil", format="png", interactive=False, elem_id="cnnviz-grid"
            )
            table = gr.Markdown(label="Top-1 per model")
            download = gr.File(label="Download: raw maps (.npy), cells (.png), meta.json")
    run.click(
        user_errors(app.compare),
        [image, models, methods, colormap, alpha, shared],
        [grid, table, download],
        api_name="compare",
        concurrency_id=MODEL_EVENTS,
    ).success(user_errors(app.compare_notice), [models], [banner], api_visibility="undocumented")


def _support_tab() -> None:
    """The sweep as one table: filter by name, family, layout and CAM exactness; sort by any column."""
    headers, rows = core.support_table()
    if not rows:
        gr.Markdown(core.support_markdown())
        return
    gr.Markdown(
        f"{len(rows)} timm models, each built and explained by `cnnviz sweep` on random weights. "
        "Filter below, or click a column's header to sort by it. *ok*: the method ran; "
        "*refused*: it does not apply, with the reason in `support/sweep.csv`."
    )
    with gr.Row():
        query = gr.Textbox(label="Model name contains", placeholder="e.g. resnet, vit_, convnext")
        family = gr.Dropdown(core.support_choices("family"), value=core.ANY, label="Family", filterable=True)
        layout = gr.Dropdown(core.support_choices("layout"), value=core.ANY, label="Layout")
        cam = gr.Dropdown(core.support_choices("cam_exact"), value=core.ANY, label="CAM exact")
    table = gr.Dataframe(
        value=rows, headers=headers, interactive=False, max_height=640, wrap=False, elem_id="cnnviz-support"
    )
    filters = [query, family, layout, cam]
    gr.on(
        [control.change for control in (query, family, layout, cam)],
        lambda *values: core.support_table(*values)[1],
        filters,
        table,
        api_visibility="undocumented",
    )
    with gr.Accordion("The sweep's summary", open=False):
        gr.Markdown(core.support_markdown())


def build(settings: core.AppSettings | None = None) -> gr.Blocks:
    """The whole app; nothing is loaded or run until a visitor (or the page's load event) asks."""
    app = App(settings or core.AppSettings.from_env())
    with gr.Blocks(title="cnnviz: what does a CNN look at?", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# cnnviz: what does the network look at?\n"
            "Gradients, deconvnet, guided backprop, CAM, Grad-CAM and guided Grad-CAM for any "
            "[timm](https://github.com/huggingface/pytorch-image-models) image classifier."
        )
        notice = core.weights_banner(app.settings)
        banner = gr.Markdown(notice, visible=bool(notice), elem_id="cnnviz-banner")
        with gr.Tab("Explain", id="explain"):
            _explain_tab(app, banner, demo)
        with gr.Tab("Compare", id="compare"):
            _compare_tab(app, banner)
        with gr.Tab("Sanity check", id="sanity"):
            ui_evaluate.sanity_tab(app)
        with gr.Tab("Methods", id="methods"):
            gr.Markdown(core.methods_markdown(), latex_delimiters=LATEX)
        with gr.Tab("Support", id="support"):
            _support_tab()
    guard_inputs(demo, app.gate)
    describe_free_text(demo)
    demo.queue(max_size=app.settings.queue_size, default_concurrency_limit=app.settings.concurrency)
    return demo


def launch(demo: gr.Blocks, **kwargs: Any) -> None:
    """Start the server: 127.0.0.1:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say otherwise."""
    kwargs.setdefault("max_file_size", f"{guard.MAX_FILE_MB}mb")  # uploads larger than this: HTTP 413
    demo.launch(theme=theme(), css=CSS, show_error=True, **kwargs)


def theme() -> gr.themes.Base:
    """Gradio's Soft theme with the system's fonts: nothing to fetch, the same look offline."""
    return gr.themes.Soft(
        font=("ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "DejaVu Sans", "sans-serif"),
        font_mono=("ui-monospace", "SFMono-Regular", "Menlo", "DejaVu Sans Mono", "monospace"),
    )
