"""The tiny Gemma 4's tokenizer: Gemma 4's control tokens and named special tokens, its turn-format
chat template, and a byte-level BPE trained on a small built-in corpus (``build_tokenizer``)."""

from __future__ import annotations

import json
from pathlib import Path

# Control tokens first (ids 0..23), as in Gemma 4: <pad>=0, <eos>=1, <bos>=2, <unk>=3.
CONTROL_TOKENS = (
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
    "<|turn>", "<turn|>",
    "<|image>", "<image|>", "<|image|>",
    "<|audio>", "<audio|>", "<|audio|>",
    "<|video|>",
    "<|channel>", "<channel|>", "<|think|>",
    "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>",
    '<|"|>',
)
TOKEN_IDS = {t: i for i, t in enumerate(CONTROL_TOKENS)}

#: Gemma 4's named special tokens (tokenizer_config.json attributes).
TINY_GEMMA4_SPECIAL_TOKENS = {
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "video_token": "<|video|>",
    "sot_token": "<|turn>",
    "eot_token": "<turn|>",
    "soc_token": "<|channel>",
    "eoc_token": "<channel|>",
    "think_token": "<|think|>",
    "escape_token": '<|"|>',
    "str_token": "<|tool_response>",
    "etr_token": "<tool_response|>",
    "stc_token": "<|tool_call>",
    "etc_token": "<tool_call|>",
    "std_token": "<|tool>",
    "etd_token": "<tool|>",
}

# Gemma 4 (E2B/E4B) turn format: optional system turn, "model" for the assistant role,
# generation prompt "<|turn>model\n"; content may be a string or a list of typed parts.
CHAT_TEMPLATE = (
    "{{- bos_token -}}\n"
    "{%- macro render_content(content) -%}\n"
    "{%- if content is string -%}{{- content | trim -}}\n"
    "{%- elif content is not none -%}\n"
    "{%- for item in content -%}\n"
    "{%- if item['type'] == 'text' -%}{{- item['text'] | trim -}}\n"
    "{%- elif item['type'] == 'image' -%}{{- '\\n\\n<|image|>\\n\\n' -}}\n"
    "{%- elif item['type'] == 'video' -%}{{- '\\n\\n<|video|>\\n\\n' -}}\n"
    "{%- elif item['type'] == 'audio' -%}{{- '<|audio|>' -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- endif -%}\n"
    "{%- endmacro -%}\n"
    "{%- set loop_messages = messages -%}\n"
    "{%- if (enable_thinking is defined and enable_thinking) or "
    "(messages and messages[0]['role'] in ['system', 'developer']) -%}\n"
    "{{- '<|turn>system\\n' -}}\n"
    "{%- if enable_thinking is defined and enable_thinking -%}{{- '<|think|>\\n' -}}{%- endif -%}\n"
    "{%- if messages and messages[0]['role'] in ['system', 'developer'] -%}\n"
    "{{- render_content(messages[0]['content']) -}}\n"
    "{%- set loop_messages = messages[1:] -%}\n"
    "{%- endif -%}\n"
    "{{- '<turn|>\\n' -}}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\n"
    "{{- '<|turn>' + role + '\\n' -}}\n"
    "{{- render_content(message['content']) -}}\n"
    "{{- '<turn|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}{%- endif -%}\n"
)

# Small built-in BPE corpus: chat scaffolding, the benchmark answer words, letters, digits,
# finance and medical vocabulary and common English.
_CORPUS_LINES = (
    "system user model assistant answer question response sentiment analyst financial medical",
    "positive negative neutral Positive Negative Neutral POSITIVE NEGATIVE NEUTRAL",
    "The sentiment is positive. The sentiment is negative. The sentiment is neutral.",
    "A B C D E A. B. C. D. Answer: A Answer: B Answer: C Answer: D (A) (B) (C) (D)",
    "0 1 2 3 4 5 6 7 8 9 10 12 15 20 25 50 100 1000 2023 2024 3.5 12.4 0.5 % percent",
    "You are a financial sentiment analyst. Respond with ONLY one word: positive, negative, or neutral.",
    "You are a medical expert. Answer the following multiple-choice question. Respond with ONLY the "
    "letter of the correct answer: A, B, C, or D. Do not explain your reasoning.",
    "Respond with ONLY the final numerical answer. No units or explanation.",
    "Please tell me the sentiment of the following sentence. Options: positive negative neutral",
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.",
    "Net sales decreased by 5 % compared with the previous year and the company cut jobs.",
    "The company said that its revenue for the quarter increased and earnings grew strongly.",
    "Shares of the bank fell after the results, and the profit warning hurt investors.",
    "The agreement was signed on Monday and the deal will be completed next year.",
    "The board of directors will propose a dividend of EUR 0.50 per share to the annual meeting.",
    "Sales in Finland increased while sales in Sweden and Russia declined in the period.",
    "The group expects its net sales to grow and its operating result to improve in 2024.",
    "Loss per share was EUR 0.12 and the net loss widened from the same period a year ago.",
    "The market price of the stock went up, the cost of the contract went down.",
    "What is the total revenue in 2009? What was the change in net income from 2008?",
    "Which of the following is the most common cause of the disease in a patient?",
    "The patient has a fever, pain and a high blood pressure; the drug of choice is given.",
    "the of and to in a is that for it as was with be by on not he i this are or his from at",
    "which but have an they you were her she there one all we their has been would will",
    "about more when up out so what some can said if no time only could new do its like",
    "over also after into year two years first most other people than then them these may",
    "good bad better worse high low increase decrease rise fall gain loss growth decline",
    "hello world please tell me the the answer is this is a test of the tiny model",
    "million billion EUR USD mn dollars euros company companies market markets price prices",
    "profit profits revenue revenues earnings sales share shares stock stocks investor bank",
)


def _corpus() -> list[str]:
    lines = list(_CORPUS_LINES)
    # The words tests rely on, at line start (as after "<|turn>model\n") and after a space, so
    # that BPE makes each of them a single token in both forms.
    focus = ["positive", "negative", "neutral", "Positive", "Negative", "Neutral", "model", "user", "system", "assistant", "answer", "A", "B", "C", "D"]
    return lines * 3 + ([" ".join(focus)] + focus + [" " + w for w in focus]) * 20


def build_tokenizer(out: Path) -> int:
    """Train the byte-level BPE and save it the transformers way; returns the vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        min_frequency=2,
        special_tokens=list(CONTROL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        padding_side="left",
        model_max_length=4096,
        extra_special_tokens=dict(TINY_GEMMA4_SPECIAL_TOKENS),
    )
    fast.save_pretrained(str(out))
    # Pin the files to Gemma 4's layout: named special tokens at top level, chat template in
    # both chat_template.jinja (transformers 5, mlx-vlm) and tokenizer_config.json (older readers).
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("extra_special_tokens", None)
    cfg.update(TINY_GEMMA4_SPECIAL_TOKENS)
    cfg.update(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "processor_class": "Gemma4Processor",
            "padding_side": "left",
            "add_bos_token": False,
            "add_eos_token": False,
            "chat_template": CHAT_TEMPLATE,
        }
    )
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / "special_tokens_map.json").unlink(missing_ok=True)
    return tok.get_vocab_size(with_added_tokens=True)
