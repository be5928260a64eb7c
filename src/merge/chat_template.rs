//! A recipe's `chat_template`, resolved as mergekit resolves it: `auto` is the template most
//! inputs share (none: the tokenizer source's stays), a bundled template's name is that
//! template, anything else must be a Jinja template itself.

use crate::gguf::Metadata;

/// ChatML: `<|im_start|>role\ncontent<|im_end|>\n` per message.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Llama 3: a header per message, the content trimmed, `<|eot_id|>` after it; BOS first.
const LLAMA3: &str = "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// Alpaca: the last system message, then `### Instruction:` / `### Input:` / `### Response:`
/// sections separated by blank lines.
const ALPACA: &str = "{% set system = messages | selectattr('role', 'equalto', 'system') | list %}{{ (system | last).content | trim if system else '' }}\n\n{% for message in messages %}{% if message['role'] == 'user' %}### Instruction:\n{{ message['content'] | trim }}{% elif message['role'] == 'assistant' %}### Response:\n{{ message['content'] | trim }}{% elif message['role'] == 'user_context' %}### Input:\n{{ message['content'] | trim }}{% endif %}{% if not loop.last and message['role'] in ['user', 'assistant', 'user_context'] %}\n\n\n{% endif %}{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}\n### Response:\n{% endif %}";

/// EXAONE: `[|role|]content`, user turns end with a newline, others with `[|endofturn|]`; an
/// empty system turn first when the conversation has none.
const EXAONE: &str = "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}{{ '[|system|][|endofturn|]\\n' }}{% endif %}{{ '[|' + message['role'] + '|]' + message['content'] }}{% if message['role'] == 'user' %}{{ '\\n' }}{% else %}{{ '[|endofturn|]\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}";

/// The templates a recipe may name (mergekit bundles the same four).
const NAMED: &[(&str, &str)] = &[
    ("alpaca", ALPACA),
    ("chatml", CHATML),
    ("exaone", EXAONE),
    ("llama3", LLAMA3),
];

/// A bundled template by name.
pub fn named(name: &str) -> Option<&'static str> {
    NAMED.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Whether a recipe's `chat_template` is usable: `auto`, a bundled name, or a template
/// (mergekit refuses a value under 20 characters or without a `{`).
pub fn check(value: &str) -> Result<(), String> {
    if value == "auto" || named(value).is_some() || (value.len() >= 20 && value.contains('{')) {
        return Ok(());
    }
    let names: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
    Err(format!(
        "chat_template `{}` is not `auto`, a bundled template ({}) or a Jinja template",
        value.escape_debug(),
        names.join(", ")
    ))
}

/// The template to write: `None` keeps the tokenizer source's. `inputs` are the input models'
/// metadata, in recipe order.
pub fn resolve<'a>(value: &str, inputs: impl Iterator<Item = &'a Metadata>) -> Option<String> {
    if value == "auto" {
        // The plurality among the inputs' templates (trimmed); a tie goes to the first seen.
        let mut counts: Vec<(String, usize)> = Vec::new();
        for m in inputs {
            let Some(t) = m.get_str("tokenizer.chat_template") else {
                continue;
            };
            let t = t.trim();
            if t.is_empty() {
                continue;
            }
            match counts.iter_mut().find(|(s, _)| s == t) {
                Some(c) => c.1 += 1,
                None => counts.push((t.to_string(), 1)),
            }
        }
        let best = counts.iter().map(|c| c.1).max()?;
        return counts.into_iter().find(|c| c.1 == best).map(|c| c.0);
    }
    Some(named(value).unwrap_or(value).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;

    #[test]
    fn auto_takes_the_plurality_and_names_resolve() {
        let with = |t: &str| {
            let mut m = Metadata::new();
            m.set("tokenizer.chat_template", Value::String(t.into()));
            m
        };
        let a = with("{{ a }}");
        let b = with(" {{ b }}\n");
        let b2 = with("{{ b }}");
        let none = Metadata::new();
        assert_eq!(
            resolve("auto", [&a, &b, &none, &b2].into_iter()).as_deref(),
            Some("{{ b }}")
        );
        assert_eq!(resolve("auto", [&none].into_iter()), None);
        assert_eq!(resolve("chatml", [].into_iter()).as_deref(), Some(CHATML));
        assert!(check("mistral").is_err());
        assert!(check("llama3").is_ok());
        assert!(check("{% for m in messages %}{{ m.content }}{% endfor %}").is_ok());
    }
}
