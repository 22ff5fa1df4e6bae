"""The named chat templates render a conversation in their format, as Hugging Face
renders them (apply_chat_template), and a recipe naming one writes it into the output."""
from __future__ import annotations

import json

import pytest

from merging.chat_templates import NAMED_TEMPLATES
from merging.engine import run_merge
from merging.recipe import Recipe
from tests.tiny_models import add_word_tokenizer, make_llama

TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Sum 2+2?"},
    {"role": "assistant", "content": " 4 "},
]

EXPECTED = {
    "chatml": ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
               "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nSum 2+2?<|im_end|>\n"
               "<|im_start|>assistant\n 4 <|im_end|>\n"),
    "llama3": ("<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nSum 2+2?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"),
    "mistral": "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Sum 2+2? [/INST] 4 </s>",
    "alpaca": ("Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!</s>\n\n"
               "### Instruction:\nSum 2+2?\n\n### Response:\n 4 </s>\n\n"),
    "exaone": ("[|system|]Be brief.[|endofturn|]\n[|user|]Hi\n[|assistant|]Hello![|endofturn|]\n"
               "[|user|]Sum 2+2?\n[|assistant|] 4 [|endofturn|]\n"),
}

GENERATION_PROMPT = {
    "chatml": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s>[INST] Hi [/INST]",
    "alpaca": "### Instruction:\nHi\n\n### Response:\n",
    "exaone": "[|user|]Hi\n[|assistant|]",
}


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_every_name_mergekit_accepts_is_shipped():
    assert sorted(NAMED_TEMPLATES) == sorted(EXPECTED) == ["alpaca", "chatml", "exaone", "llama3", "mistral"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_template_renders_two_turns(tokenizer, name):
    text = tokenizer.apply_chat_template(TWO_TURNS, chat_template=NAMED_TEMPLATES[name], tokenize=False)
    assert text == EXPECTED[name]
    prompt = tokenizer.apply_chat_template(TWO_TURNS[1:2], chat_template=NAMED_TEMPLATES[name], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == GENERATION_PROMPT[name]


def test_mistral_refuses_other_roles(tokenizer):
    with pytest.raises(Exception, match="roles are user and assistant"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], chat_template=NAMED_TEMPLATES["mistral"],
                                      tokenize=False)


def test_a_recipe_naming_a_template_writes_it(tmp_path):
    from transformers import AutoTokenizer

    model = make_llama(tmp_path / "m", seed=0, vocab=8)
    add_word_tokenizer(model, ["<unk>", "a", "b"])
    recipe = Recipe.from_yaml(f"merge_method: linear\nmodels: [{{model: {model}}}]\nchat_template: chatml\n")
    run_merge(recipe, tmp_path / "out", device="cpu", progress=False)
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == NAMED_TEMPLATES["chatml"]
    loaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert loaded.apply_chat_template(TWO_TURNS[1:3], tokenize=False) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
