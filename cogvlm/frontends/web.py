"""The Gradio web demo: upload an image, chat about it with streaming, grounding and agent modes."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from cogvlm.api import CogVLM, ImageInputs
from cogvlm.errors import CogVLMError
from cogvlm.frontends.server.errors import APIError
from cogvlm.frontends.server.scheduler import Delta, Failed, PreparedJob, Scheduler
from cogvlm.frontends.server.tp_coordinator import (
    BatchShape,
    finish,
    follow,
    replicated_batch,
    stop_on_failure,
)
from cogvlm.frontends.text_checks import check_prompt_fits
from cogvlm.frontends.web_inputs import parse_web_turn, slider_ranges
from cogvlm.image_processors.drawing import draw_response
from cogvlm.inference.generate import GenerationConfig
from cogvlm.launch.distributed import ParallelRuntime
from cogvlm.text_processors.agent import parse_agent_reply
from cogvlm.text_processors.grounding import find_box_groups
from cogvlm.text_processors.templates import build_task_prompt

GREETING = "Upload an image and ask me anything about it."
MODES = ("Chat", "Grounding", "Agent")


@dataclass(frozen=True)
class WebConfig:
    """Where the demo listens, how long its answers may be (None: the model's context), how many are
    decoded together (one continuous batch), how many more may wait, for how long one may run and how
    large an uploaded file may be."""

    host: str = "127.0.0.1"
    port: int = 7860
    max_length: int | None = None
    max_active: int = 4
    max_queue: int = 32  # requests waiting for a row; Gradio's default is no limit at all
    request_timeout_s: float = 600.0
    max_upload_bytes: int = 20 << 20  # an uploaded image; Gradio's default is no limit at all


def stream_reply(
    session: CogVLM,
    scheduler: Scheduler,
    images: ImageInputs | None,
    query: str,
    history: list[tuple[str, str]],
    generation: GenerationConfig,
) -> Iterator[str]:
    """The growing reply text, one update per decoded piece, decoded as a row of the scheduler's batch."""
    request = session.request(images, query, history)
    generation.new_token_budget(request.text.seq_len)  # a prompt that is too long fails here
    engine_config = dataclasses.replace(generation, stop_strings=())  # the scheduler cuts at stop strings
    prepared = PreparedJob(request, engine_config, request.text.seq_len, generation.stop_strings)
    job = scheduler.submit(prepared)
    reply = ""
    try:
        while True:
            event = job.events.get()
            if isinstance(event, Failed):
                raise event.error
            if not isinstance(event, Delta):
                break
            reply += event.text
            yield reply
    finally:
        job.cancel()  # a closed page frees its row
    yield reply


def query_for_mode(mode: str, text: str) -> str:
    """Agent mode puts the task into the first agent template, quoted, with the grounding suffix.

    Grounding mode sends the text as typed (e.g. "Where is the dog?") and draws the boxes of the reply.
    """
    if mode == "Agent":
        return build_task_prompt("agent", text, index=0, with_grounding=True)
    return text


def grounding_outputs(image, reply: str, mode: str) -> tuple:
    """The image with the reply's boxes drawn (None when there are none) and the parsed agent action."""
    if mode == "Chat" or image is None:
        return None, ""
    has_boxes = bool(find_box_groups(reply))
    drawn = draw_response(image, reply) if has_boxes else None
    if mode != "Agent":
        return drawn, ""
    parsed = parse_agent_reply(reply)
    operation = parsed.operation.label() if parsed.operation else ""
    return drawn, "\n".join(part for part in (parsed.next_action or "", operation) if part)


def slider_defaults(session: CogVLM) -> dict[str, float]:
    """The sliders' start values: the model's own sampling defaults, the ones `chat` and `serve` use."""
    sampling = session.generation_defaults.sampling
    return {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}


def web_generation(
    session: CogVLM, config: WebConfig, temperature: float, top_p: float, top_k: float
) -> GenerationConfig:
    """Generation settings for the sliders' values, over the model's defaults (greedy while top k is 1)."""
    return session.generation_config(
        max_length=config.max_length, temperature=max(temperature, 1e-3), top_k=int(top_k), top_p=top_p
    )


def build_demo(session: CogVLM, config: WebConfig, scheduler: Scheduler):
    """The Gradio Blocks app for `session`, whose answers `scheduler` decodes."""
    import gradio as gr

    start = slider_defaults(session)
    ranges = slider_ranges(start)

    def respond(image, text, messages, mode, temperature, top_p, top_k):
        messages = messages if isinstance(messages, list) else []  # Gradio's API passes anything
        if not isinstance(text, str) or not text.strip():
            yield messages, gr.update(), None, ""
            return
        messages = [*messages, {"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        try:
            sliders = dict(temperature=temperature, top_p=top_p, top_k=top_k)
            turn = parse_web_turn(text, messages[:-2], GREETING, ranges, **sliders)
            generation = web_generation(session, config, turn.temperature, turn.top_p, turn.top_k)
            query = query_for_mode(mode, turn.query)
            texts = [query, *(part for pair in turn.history for part in pair)]
            check_prompt_fits(session.tokenizer, texts, generation.max_length)
            images = session.process_image(image) if image is not None else None
            for reply in stream_reply(session, scheduler, images, query, list(turn.history), generation):
                messages[-1] = {"role": "assistant", "content": reply}
                yield messages, "", None, ""
        except (CogVLMError, APIError) as error:
            messages[-1] = {"role": "assistant", "content": f"Error: {error}"}
            yield messages, "", None, ""
            return
        reply = messages[-1]["content"]
        yield messages, "", *grounding_outputs(image, reply, mode)

    def clear():
        return [{"role": "assistant", "content": GREETING}], "", None, ""

    with gr.Blocks(title="CogVLM") as demo:
        gr.Markdown(f"## CogVLM demo: `{session.source.path if session.source else 'model'}`")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="pil", label="Image", elem_id="image-input")
                mode = gr.Radio(list(MODES), value="Chat", label="Mode", elem_id="mode")
                temperature = gr.Slider(
                    *ranges["temperature"], value=start["temperature"], step=0.01, label="Temperature"
                )
                top_p = gr.Slider(*ranges["top_p"], value=start["top_p"], step=0.01, label="Top p")
                top_k = gr.Slider(
                    *ranges["top_k"], value=start["top_k"], step=1, label="Top k (1: greedy)", elem_id="top-k"
                )
                boxed = gr.Image(type="pil", label="Grounding", interactive=False, elem_id="grounding-output")
                action = gr.Textbox(label="Parsed action", interactive=False, elem_id="agent-action")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(
                    value=[{"role": "assistant", "content": GREETING}], elem_id="chatbot", height=480
                )
                query = gr.Textbox(label="Question", placeholder="Ask about the image", elem_id="query")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    reset = gr.Button("Clear", elem_id="clear")
        inputs = [image, query, chatbot, mode, temperature, top_p, top_k]
        outputs = [chatbot, query, boxed, action]
        send.click(respond, inputs, outputs)
        query.submit(respond, inputs, outputs)
        reset.click(clear, [], outputs)
        image.change(clear, [], outputs)  # a new image starts a new conversation
    return demo


def run_web(session: CogVLM, config: WebConfig, runtime: ParallelRuntime | None = None) -> None:
    """Serve the demo until interrupted.

    Under tensor parallelism rank 0 serves the page and the other ranks follow its decode batch; a rank
    that stops ends the demo with `TensorParallelFailure`.
    """
    batch, channel = replicated_batch(session.model, runtime, BatchShape(config.max_active, False))
    if channel is not None and not runtime.is_first_rank:
        follow(batch, channel)
        return
    scheduler = Scheduler(
        session.model,
        session.tokenizer,
        max_active=config.max_active,
        max_queue=config.max_queue,
        timeout_s=config.request_timeout_s,
        batch=batch,
    )
    demo = build_demo(session, config, scheduler)
    scheduler.start()
    stopped = threading.Event()
    stop_on_failure(batch, stopped.set)
    try:
        demo.queue(default_concurrency_limit=config.max_active, max_size=config.max_queue).launch(
            server_name=config.host,
            server_port=config.port,
            share=False,
            prevent_thread_lock=True,
            max_file_size=config.max_upload_bytes,
        )
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
        scheduler.stop()
        finish(batch)
