"""A conversation and a chat template shared by the format and TRL tests."""

# SmolLM2's own template with {% generation %} markers around what the assistant writes.
MARKED_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Three user/assistant turns; a user turn repeats a reply's words so a naive text search would be fooled.
CONVERSATION = [
    {"role": "user", "content": "Say the colour of the sky."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "You said Blue. Now the colour of grass?"},
    {"role": "assistant", "content": "Green, mostly."},
    {"role": "user", "content": "And snow?"},
    {"role": "assistant", "content": "White\nas a rule."},
]
