#!/usr/bin/env python3
"""Golden data for tests/tokenizer_test.cpp and tests/chat_template_test.cpp.

The independent implementation is Hugging Face `tokenizers` (encode/decode/DecodeStream) and
`transformers` (apply_chat_template, which renders with jinja2). Run from the repository root:
    pip install tokenizers transformers jinja2
    python3 tests/data/make_tokenizer_goldens.py          # writes tests/data/tokenizer_goldens/*.json
    python3 tests/data/make_tokenizer_goldens.py --bench  # times `tokenizers` (one thread) on the
                                                          # corpus of apps/bench-tokenizer.cpp
    python3 tests/data/make_tokenizer_goldens.py --random-corpus /tmp/c.json  # cache-cold corpus for
    python3 tests/data/make_tokenizer_goldens.py --bench --corpus /tmp/c.json  # both benches
The text set is tests/data/tokenizer_goldens/texts.json (committed); the tokenizers are the real
tokenizer.json/tokenizer_config.json files under tests/data/tokenizers/<name>/.
"""
import argparse
import json
import os
import time

DATA = os.path.dirname(os.path.abspath(__file__))
GOLD = os.path.join(DATA, "tokenizer_goldens")
NAMES = ["qwen3", "llama2", "deepseek_v3"]


def load_texts():
    with open(os.path.join(GOLD, "texts.json"), encoding="utf-8") as f:
        return json.load(f)


def random_texts(count=150, seed=1234):
    # Seeded random strings mixing scripts, digits, punctuation, odd whitespace, combining marks,
    # emoji, rare code points and pieces of special tokens: the fuzz half of the goldens.
    import random
    rng = random.Random(seed)
    alphabets = [
        "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "  \t\n\r\n\u00a0\u3000\u2009",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "éèêëàâäôöûüçñß", "\u0301\u0308\u0327", "你好世界中文字符测试",
        "ひらがなカタカナ", "한국어", "Привет", "مرحبا", "नमस्ते", "😀🎉🦀👍🏽❤️\u200d", "\u0001\u007f\u200b\ufeff",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢\U0001F9EA\U00010348", "ｆｕｌｌ１２３",
    ]
    pieces = ["<|im_start|>", "<|im_end|>", "<s>", "</s>", "<｜User｜>", "<think>", "'s", "'LL", "```", "...", "\n\n"]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.1:
                parts.append(rng.choice(pieces))
            else:
                a = rng.choice(alphabets)
                parts.append("".join(rng.choice(a) for _ in range(rng.randint(1, 8))))
        out.append("".join(parts))
    return out


# Synthetic tokenizers trained here on the text set, to cover tokenizer.json features the three
# real files do not use: lstrip/rstrip/single_word/normalized added tokens, NFKC + Lowercase,
# ByteLevel with its GPT-2 regex and add_prefix_space, a template with a trailing token, unk
# without byte fallback, continuing_subword_prefix, Replace/Split with regexes, Removed, no decoder,
# Metaspace (prepend_scheme "first", split) with byte fallback.
SYNTHETIC = ["synthetic_bytelevel", "synthetic_unk", "synthetic_metaspace"]
SYNTHETIC_TEXTS = [
    "a  [LS] b [LS]c", "x[RS]   y [RS]", "word words sword word_ wordy (word) word", "MIXED mixed MiXeD",
    "ﬁne ｆｕｌｌ Ⅻ", "[LS][RS]word[LS]", "tabs\tand  spaces   here", "digits 12345 and 6.78",
]


def make_synthetic(texts):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    corpus = (texts + SYNTHETIC_TEXTS) * 3
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.add_tokens([AddedToken("[LS]", lstrip=True, normalized=False), AddedToken("[RS]", rstrip=True, normalized=False),
                    AddedToken("word", single_word=True, normalized=False), AddedToken("MiXeD", normalized=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", tok.token_to_id("<bos>")), ("<eos>", tok.token_to_id("<eos>"))])
    yield "synthetic_bytelevel", tok

    tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##", fuse_unk=False))
    tok.normalizer = normalizers.Replace(Regex(r"\s+"), " ")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="removed"), pre_tokenizers.Split(Regex(r"\d"), behavior="isolated")])
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["[UNK]"], limit_alphabet=40, continuing_subword_prefix="##",
        show_progress=False))
    yield "synthetic_unk", tok

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Metaspace(prepend_scheme="first"), decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)],
        limit_alphabet=60, show_progress=False))
    yield "synthetic_metaspace", tok


def encode_goldens(name, texts):
    import tokenizers
    from tokenizers.decoders import DecodeStream
    tok = tokenizers.Tokenizer.from_file(os.path.join(DATA, "tokenizers", name, "tokenizer.json"))
    cases = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=True).ids
        stream, chunks = DecodeStream(skip_special_tokens=False), []
        for i in ids:
            piece = stream.step(tok, i)
            if piece is not None:
                chunks.append(piece)
        cases.append({
            "text": text,
            "ids": ids,
            "ids_no_special": tok.encode(text, add_special_tokens=False).ids,
            "decode": tok.decode(ids, skip_special_tokens=False),
            "decode_skip_special": tok.decode(ids, skip_special_tokens=True),
            "stream": chunks,
        })
    return {"tokenizer": name, "tokenizers_version": tokenizers.__version__, "cases": cases}


SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "Hello! What is 2+2?"}
A1 = {"role": "assistant", "content": "2+2 = 4."}
U2 = {"role": "user", "content": "And in French?\n  Answer briefly."}
A_THINK = {"role": "assistant", "content": "<think>\nThe user wants French.\n</think>\n\nQuatre."}
U3 = {"role": "user", "content": "Merci ! 你好 🎉"}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}}]}
TOOL_RESULT = {"role": "tool", "content": "{\"temp\": 21}"}
TOOL_RESULT2 = {"role": "tool", "content": "12:00"}

CONVERSATIONS = [
    # (messages, add_generation_prompt, extra template variables)
    ([U1], True, {}),
    ([U1], False, {}),
    ([SYSTEM, U1], True, {}),
    ([SYSTEM, U1, A1, U2], True, {}),
    ([SYSTEM, U1, A1, U2], False, {}),
    ([U1, A1], False, {}),
    ([SYSTEM, U1, A1, U2, A_THINK, U3], True, {}),
    ([U1, A_THINK], False, {}),
    ([SYSTEM, {"role": "system", "content": "Be brief."}, U1], True, {}),
    ([U1], True, {"enable_thinking": False}),
]
A_REASONING = {"role": "assistant", "content": "Quatre.", "reasoning_content": "French for four."}
QWEN_ONLY = [
    ([SYSTEM, U1, A1, U2, A_REASONING], False, {}),
    ([U1, A1, U2, A_REASONING, U3], True, {}),
    ([SYSTEM, U1, TOOL_CALL, TOOL_RESULT, TOOL_RESULT2], True, {"tools": TOOLS}),
    ([U1, TOOL_CALL, TOOL_RESULT], False, {}),
]
# transformers drops None-valued message keys, so DeepSeek's tool-call branch (content is none)
# cannot be reached through apply_chat_template; its tool-output branch can.
DEEPSEEK_ONLY = [
    ([SYSTEM, U1, A1, TOOL_RESULT, TOOL_RESULT2, A1], True, {}),
    ([U1, A1, TOOL_RESULT], True, {}),
]


def chat_goldens(name):
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(DATA, "tokenizers", name))
    if not tok.chat_template:
        return None
    convs = CONVERSATIONS + (QWEN_ONLY if name == "qwen3" else DEEPSEEK_ONLY if name == "deepseek_v3" else [])
    cases = []
    for messages, agp, extra in convs:
        kwargs = dict(extra)
        tools = kwargs.pop("tools", None)
        text = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=agp, tokenize=False, **kwargs)
        cases.append({"messages": messages, "add_generation_prompt": agp, "variables": extra, "text": text})
    return {"tokenizer": name, "transformers_version": transformers.__version__, "cases": cases}


# Jinja features beyond the three templates, rendered by jinja2 in transformers' environment.
JINJA_SNIPPETS = [
    ("{{ x }}|{{ y }}|{{ z }}|{{ w }}|{{ u }}|{{ f }}", {"x": "s", "y": 3, "z": None, "w": True, "u": [1, "a", None], "f": 2.5}),
    ("{{ d }}|{{ d.a }}|{{ d['b'] }}|{{ d.c }}|{{ d.get('c', 7) }}", {"d": {"a": 1, "b": "x'y"}}),
    ("{% for k, v in d.items() %}{{ loop.index }}:{{ k }}={{ v }}{% if not loop.last %}, {% endif %}{% endfor %}", {"d": {"a": 1, "b": 2, "c": 3}}),
    ("{% for x in xs %}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.length }} {% else %}empty{% endfor %}", {"xs": ["p", "q"]}),
    ("{% for x in xs %}{{ x }}{% else %}empty{% endfor %}", {"xs": []}),
    ("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x > 5 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("{{ s[::-1] }}|{{ s[1:3] }}|{{ s[-2:] }}|{{ s[:-1] }}|{{ s[::2] }}|{{ l[1:] }}|{{ l[::-1] }}|{{ l[-1] }}|{{ s[0] }}", {"s": "héllo", "l": [1, 2, 3]}),
    ("{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '\n\na\n'.lstrip('\n') }}|{{ 'a\n\n'.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}", {}),
    ("{{ 'Hello'.upper() }}{{ 'Hello'.lower() }}{{ 'hello world'.title() }}{{ 'hello'.capitalize() }}{{ 'aXa'.replace('a', 'b') }}{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}", {}),
    ("{{ xs | length }}|{{ 'abc' | length }}|{{ xs | first }}|{{ xs | last }}|{{ xs | join('-') }}|{{ '  t ' | trim }}|{{ 'ab' | upper }}|{{ u | default('dflt') }}|{{ '' | default('e', true) }}", {"xs": [3, 4, 5]}),
    ("{{ v | tojson }}|{{ v | tojson(indent=2) }}|{{ q | tojson }}|{{ [] | tojson }}|{{ {} | tojson }}",
     {"v": {"a": [1, 2.5, None, True], "b": {"c": "ü"}}, "q": "é\n\"quote\"\t\\ \u0001"}),
    ("{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % 3 }}|{{ 7 / 2 }}|{{ 2 ** 10 }}|{{ 'a' ~ 1 ~ none }}|{{ [1] + [2] }}|{{ 'ab' * 2 }}|{{ -3 }}", {}),
    ("{{ 1 < 2 and 'x' or 'y' }}|{{ 0 or '' or 'z' }}|{{ not 0 }}|{{ 1 == 1.0 }}|{{ 'a' in 'cat' }}|{{ 2 not in [1, 3] }}|{{ 'k' in {'k': 1} }}|{{ 'x' if false else 'y' }}|{{ 'x' if false }}", {}),
    ("{{ u is defined }}{{ u is undefined }}{{ n is none }}{{ n is not none }}{{ s is string }}{{ 3 is number }}{{ 3 is integer }}{{ 3.0 is float }}{{ d is mapping }}{{ l is iterable }}{{ 4 is even }}{{ 3 is odd }}{{ 9 is divisibleby 3 }}{{ f is false }}{{ t is true }}{{ t is boolean }}", {"n": None, "s": "q", "d": {}, "l": [], "f": False, "t": True}),
    ("{% set ns = namespace(a=1, b='x') %}{% for i in [1, 2, 3] %}{% set ns.a = ns.a + i %}{% set tmp = i %}{% endfor %}{{ ns.a }}{{ ns.b }}{{ tmp }}", {}),
    ("{% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}{% for i in [1] %}{% set x = 3 %}{{ x }}{% endfor %}{{ x }}", {}),
    ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', punct='?') }}", {}),
    ("a\n  {% if true %}\n    b\n  {% endif %}\nc\n{# comment #}\nd {%- if true %} e {% endif -%} f\n{{- ' g ' -}}\n h", {}),
    ("{%- for m in messages -%}\n  <{{ m.role }}>\n{%+ if m.content %}{{ m.content }}{% endif %}\n{% endfor %}\n   end", {"messages": [{"role": "u", "content": "hi"}, {"role": "a", "content": ""}]}),
    ("{{ \"dq\" }}{{ 'it\\'s' }}{{ 'a' 'b' }}{{ 'tab\\tend' }}{{ [1, 'two', [3]] }}{{ {'k': 'v'} }}{{ (1, 2) }}", {}),
    ("{{ dict(a=1, b=2) | tojson }}|{{ xs | list }}|{{ 'ab' | list }}|{{ d | items | list }}|{{ '3' | int + 1 }}|{{ 2 | float }}|{{ -2 | abs }}", {"xs": [1], "d": {"k": 1}}),
    ("{{ x.y.z is defined }}|{{ x['nope'] is defined }}|{{ l[5] is defined }}|{{ none.attr is defined }}", {"x": {"y": {}}, "l": [1]}),
    ("{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] | trim }}{% elif m.role == 'user' %}[U]{{ m.content }}{% else %}[A]{{ m.content }}{% endif %}{% endfor %}", {"messages": [{"role": "system", "content": " s "}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}),
    ("{{ messages[0]['content'].split('</think>')[-1].lstrip('\\n') }}|{{ (messages | length) - 1 }}|{{ messages[::-1][0].role }}", {"messages": [{"role": "user", "content": "<think>x</think>\n\nans"}, {"role": "b", "content": ""}]}),
]


# Idioms of other checkpoints' templates (Mistral/Mixtral alternation check, Llama-3 headers with
# `| trim` inside `+`, a system message pulled out with a slice).
CHAT = [{"role": "system", "content": " Be nice. "}, {"role": "user", "content": " Hi! "},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
JINJA_SNIPPETS += [
    ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
     "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
     "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
     "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}",
     {"bos_token": "<s>", "eos_token": "</s>", "messages": CHAT[1:]}),
    ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
     "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
     "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
     "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
     {"bos_token": "<|begin_of_text|>", "messages": CHAT, "add_generation_prompt": True}),
    ("{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
     "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
     "[{{ system_message }}]{% for m in messages %}{{ loop.index }}{{ m.role[0] | upper }}{% endfor %}",
     {"messages": CHAT}),
]


JINJA_SNIPPETS += [
    ("{% for m in messages if m.role != 'system' %}{{ loop.index }}/{{ loop.length }}:{{ m.role }} {% else %}none{% endfor %}"
     "|{% for m in messages if m.role == 'tool' %}x{% else %}none{% endfor %}", {"messages": CHAT}),
    ("{% set block %}Hi {{ name }}\n{% endset %}[{{ block }}]{{ block | length }}", {"name": "Ann"}),
    ("{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}"
     "|{{ messages | rejectattr('role', 'eq', 'user') | list | length }}|{{ [0, 1, 2, '', 'a'] | select | list }}"
     "|{{ [1, 2, 3, 4] | reject('odd') | list }}|{{ ['a', 'b'] | map('upper') | list }}"
     "|{{ messages | selectattr('name') | list | length }}", {"messages": CHAT + [{"role": "user", "content": "x", "name": "n"}]}),
]


def jinja_goldens():
    from transformers.utils.chat_template_utils import _compile_jinja_template
    return [{"template": src, "variables": variables, "text": _compile_jinja_template(src).render(**variables)}
            for src, variables in JINJA_SNIPPETS]


def bench_corpus(texts, min_bytes):
    # Same construction as apps/bench-tokenizer.cpp: the text set repeated until it holds
    # min_bytes of UTF-8; each text is one document.
    docs = [t for t in texts if t]
    size = sum(len(t.encode("utf-8")) for t in docs)
    return docs * -(-min_bytes // size)


def bench(docs):
    import tokenizers
    whole = "\n".join(docs)
    size_docs = sum(len(d.encode("utf-8")) for d in docs)
    size_whole = len(whole.encode("utf-8"))
    for name in NAMES:
        tok = tokenizers.Tokenizer.from_file(os.path.join(DATA, "tokenizers", name, "tokenizer.json"))
        tok.encode_batch(docs[:1000], add_special_tokens=False)  # warm-up
        for mode in ("documents", "one call"):
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                if mode == "documents":
                    n = sum(len(e.ids) for e in tok.encode_batch(docs, add_special_tokens=False))
                else:
                    n = len(tok.encode(whole, add_special_tokens=False).ids)
                best = min(best, time.perf_counter() - t0)
            size = size_docs if mode == "documents" else size_whole
            print(f"tokenizers {tokenizers.__version__:8s} {name:12s} {mode:9s} {size / 1e6:.2f} MB "
                  f"{n:8d} tokens {size / 1e6 / best:8.2f} MB/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", action="store_true", help="time tokenizers instead of writing goldens")
    ap.add_argument("--mb", type=float, default=4.0, help="bench corpus size in MiB")
    ap.add_argument("--corpus", help="bench on the documents of this JSON list instead (see --random-corpus)")
    ap.add_argument("--random-corpus", metavar="FILE",
                    help="write --count seeded random documents (few repeated words, so word caches miss) to FILE")
    ap.add_argument("--count", type=int, default=30000)
    ap.add_argument("--retrain", action="store_true", help="overwrite the synthetic tokenizers too")
    args = ap.parse_args()
    if args.random_corpus:
        with open(args.random_corpus, "w", encoding="utf-8") as f:
            json.dump(random_texts(args.count, seed=7), f, ensure_ascii=False)
        return
    os.environ["RAYON_NUM_THREADS"] = "1"  # one thread, like the C++ bench (set before the import)
    texts = load_texts()
    if args.bench:
        if args.corpus:
            with open(args.corpus, encoding="utf-8") as f:
                bench([d for d in json.load(f) if d])
        else:
            bench(bench_corpus(texts, int(args.mb * (1 << 20))))
        return
    path = os.path.join(GOLD, "jinja.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(jinja_goldens(), f, ensure_ascii=False, indent=1)
    print("wrote", path)
    # The BPE trainer breaks ties differently from run to run: keep the committed synthetic
    # tokenizers (the goldens are computed from the files) unless --retrain is given.
    for name, tok in make_synthetic(texts):
        path = os.path.join(DATA, "tokenizers", name, "tokenizer.json")
        if args.retrain or not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tok.save(path)
    for name in NAMES + SYNTHETIC:
        extra = SYNTHETIC_TEXTS if name in SYNTHETIC else []
        out = {"encode": encode_goldens(name, texts + extra + random_texts())}
        chat = chat_goldens(name)
        if chat is not None:
            out["chat"] = chat
        path = os.path.join(GOLD, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False, indent=1)
        print("wrote", path)


if __name__ == "__main__":
    main()
