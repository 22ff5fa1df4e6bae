"""Named chat templates a recipe's `chat_template:` may give instead of the Jinja text.

The names are the ones mergekit 0.1.5 ships (alpaca, chatml, exaone, llama3, mistral);
each template here is written from its format's public convention:
- chatml: `<|im_start|>ROLE\\nTEXT<|im_end|>\\n` per message;
- llama3: BOS, then `<|start_header_id|>ROLE<|end_header_id|>\\n\\nTEXT<|eot_id|>` per
  message (the text stripped of surrounding whitespace);
- mistral: BOS, `[INST] USER [/INST]ASSISTANT</s>` per exchange, a system message put
  before the first user message with a blank line between them;
- alpaca: the system text, then `### Instruction:` and `### Response:` sections;
- exaone: `[|system|]`, `[|user|]` and `[|assistant|]` turns, system and assistant turns
  closed by `[|endofturn|]`.
Each ends with the assistant's opening when `add_generation_prompt` is set. They are one
line each: Hugging Face renders templates with trim_blocks and lstrip_blocks, and
literal newlines only appear where the format has them ('\\n' inside Jinja strings).
Special tokens the tokenizer does not define (bos_token, eos_token) render as nothing.
"""
from __future__ import annotations

from merging.errors import MergeError

_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim) + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

_MISTRAL = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system_text = messages[0]['content'] + '\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system_text = '' %}{% set turns = messages %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in turns %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system_text if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('mistral: roles are user and assistant, after an optional system message') }}"
    "{% endif %}"
    "{% endfor %}"
)

_ALPACA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] }}{{ eos_token }}{{ '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)

_EXAONE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[|system|]' + message['content'] + '[|endofturn|]\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[|user|]' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '[|assistant|]' + message['content'] + '[|endofturn|]\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"
)

NAMED_TEMPLATES = {"alpaca": _ALPACA, "chatml": _CHATML, "exaone": _EXAONE, "llama3": _LLAMA3, "mistral": _MISTRAL}


def template_text(value: str) -> str:
    """The Jinja text a recipe's chat_template names: a built-in name, or the text itself
    (anything with a Jinja tag). 'auto' is resolved by the caller, from the inputs."""
    if value in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[value]
    if "{{" in value or "{%" in value:
        return value
    raise MergeError(f"chat_template {value!r}: give auto, one of {', '.join(sorted(NAMED_TEMPLATES))}, "
                     "or the Jinja template text")
