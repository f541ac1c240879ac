//! Method descriptors: how many operand-stack words a method's parameters take. Shared with
//! `build.rs`, which stores the count of every API method in the generated table (`ApiMethod::words`);
//! the crate compiles it only for its tests.

/// Argument words of an API method descriptor (`this` not included).
pub(crate) fn arg_words(desc: &str) -> usize {
    let params = desc
        .strip_prefix('(')
        .and_then(|d| d.split(')').next())
        .unwrap_or("");
    let b = params.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'I' => n += 2,
            b'[' => {
                while i < b.len() && b[i] == b'[' {
                    i += 1;
                }
                if b.get(i) == Some(&b'L') {
                    while i < b.len() && b[i] != b';' {
                        i += 1;
                    }
                }
                n += 1;
            }
            b'L' => {
                while i < b.len() && b[i] != b';' {
                    i += 1;
                }
                n += 1;
            }
            _ => n += 1,
        }
        i += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::arg_words;

    #[test]
    fn words_per_parameter_as_the_jvm_counts_them() {
        // JVMS §4.3.3: each parameter one slot, long/double two; Java Card's int is the
        // two-word type; arrays and references one whatever their element type.
        assert_eq!(arg_words("()V"), 0);
        assert_eq!(arg_words("(BS)V"), 2);
        assert_eq!(arg_words("([BSS)S"), 3);
        assert_eq!(arg_words("(I)V"), 2);
        assert_eq!(arg_words("(SIZ)I"), 4);
        assert_eq!(arg_words("(Ljavacard/security/Key;B[BSS)V"), 5);
        assert_eq!(arg_words("([[I[Ljavacard/framework/AID;)V"), 2);
        assert_eq!(arg_words("no descriptor"), 0);
    }
}
