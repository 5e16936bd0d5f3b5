//! Chat templates: how one user message is wrapped for an instruction-tuned model.

/// A chat format, applied to a single user turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    /// ChatML (`<|im_start|>role\n...<|im_end|>\n`), used by SmolLM2 and Qwen.
    ChatMl {
        /// The system message inserted when the conversation has none, as the model's own
        /// template does (SmolLM2: "You are a helpful AI assistant named SmolLM, ...").
        default_system: Option<String>,
    },
    /// Gemma's turn format (`<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n`),
    /// used by Gemma, Gemma 2 and Gemma 3.
    Gemma,
}

impl ChatTemplate {
    /// ChatML without a default system message.
    pub fn chatml() -> Self {
        ChatTemplate::ChatMl {
            default_system: None,
        }
    }

    /// Gemma's turn format.
    pub fn gemma() -> Self {
        ChatTemplate::Gemma
    }

    /// The prompt for one user message, ending with the assistant header so the model's
    /// continuation is its reply:
    ///
    /// - ChatML: `<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n` (preceded by
    ///   the system turn when there is a default system message);
    /// - Gemma: `<start_of_turn>user\n{message}<end_of_turn>\n<start_of_turn>model\n`, the
    ///   message trimmed of surrounding whitespace as Gemma's own template does (`| trim`). Its
    ///   template starts with `<bos>`, which is left to `encode(.., add_special = true)` so the
    ///   prompt does not get two.
    pub fn apply(&self, user_message: &str) -> String {
        match self {
            ChatTemplate::ChatMl { default_system } => {
                let mut s = String::new();
                if let Some(system) = default_system {
                    s.push_str("<|im_start|>system\n");
                    s.push_str(system);
                    s.push_str("<|im_end|>\n");
                }
                s.push_str("<|im_start|>user\n");
                s.push_str(user_message);
                s.push_str("<|im_end|>\n<|im_start|>assistant\n");
                s
            }
            ChatTemplate::Gemma => format!(
                "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n",
                user_message.trim()
            ),
        }
    }

    /// The end-of-turn token the template closes every message with.
    pub fn end_of_turn(&self) -> &'static str {
        match self {
            ChatTemplate::ChatMl { .. } => "<|im_end|>",
            ChatTemplate::Gemma => "<end_of_turn>",
        }
    }

    /// Recognises the template from a model's Jinja chat template text (GGUF
    /// `tokenizer.chat_template` or `tokenizer_config.json`'s `chat_template`): Gemma's turn
    /// format (`<start_of_turn>`) or ChatML. For ChatML a literal default system message
    /// (`'<|im_start|>system\n...<|im_end|>`) is picked up so the prompt matches what the model
    /// was tuned on.
    pub fn detect(jinja: &str) -> Option<Self> {
        if jinja.contains("<start_of_turn>") {
            return Some(ChatTemplate::Gemma);
        }
        if !jinja.contains("<|im_start|>") {
            return None;
        }
        const OPEN: &str = "<|im_start|>system\n";
        let default_system = jinja.find(OPEN).and_then(|start| {
            let rest = &jinja[start + OPEN.len()..];
            let end = rest.find("<|im_end|>")?;
            let text = &rest[..end];
            // A literal message, not a Jinja expression such as `' + message['content'] + '`.
            (!text.is_empty() && !text.contains('\'') && !text.contains("{{"))
                .then(|| text.to_string())
        });
        Some(ChatTemplate::ChatMl { default_system })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_wraps_one_user_turn() {
        assert_eq!(
            ChatTemplate::chatml().apply("Hi?"),
            "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn detects_chatml_with_default_system_message() {
        let jinja = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        let t = ChatTemplate::detect(jinja).unwrap();
        assert_eq!(
            t.apply("x"),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
        );
        let plain = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}";
        assert_eq!(ChatTemplate::detect(plain), Some(ChatTemplate::chatml()));
        assert_eq!(ChatTemplate::detect("[INST] {{ x }} [/INST]"), None);
    }

    #[test]
    fn gemma_turn_format() {
        // google/gemma-3-*-it's template, as far as one user turn reaches.
        let jinja = "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- endif -%}{%- for message in loop_messages -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}";
        let t = ChatTemplate::detect(jinja).unwrap();
        assert_eq!(t, ChatTemplate::gemma());
        assert_eq!(
            t.apply("  What is 2+2?\n"),
            "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(t.end_of_turn(), "<end_of_turn>");
    }
}
