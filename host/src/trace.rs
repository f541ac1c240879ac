//! APDU traces with secrets redacted.
//!
//! Every exchange can be shown as `>>` (command) and `<<` (response) lines. The data field of
//! commands that carry PINs or keys is replaced by `<redacted N bytes>`: commands marked
//! [`Command::sensitive`], and whatever the INS says is secret (VERIFY, CHANGE REFERENCE DATA,
//! RESET RETRY COUNTER, PUT KEY) whatever the marking. Responses to such commands are
//! redacted too. Key material never reaches a trace in clear.

use card_wire::apdu::{Command, Response};
use std::sync::{Arc, Mutex};

/// INS codes whose data field is always secret.
pub const SECRET_INS: [u8; 5] = [0x20, 0x21, 0x24, 0x2C, 0xD8];

/// Whether a command's data (and its response) must be redacted.
pub fn is_secret(cmd: &Command) -> bool {
    cmd.is_sensitive() || SECRET_INS.contains(&cmd.ins())
}

/// Which layer a trace line comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Bytes as exchanged with the transport.
    Wire,
    /// Plain commands and responses inside an SCP03 session.
    Secure,
}

fn prefix(layer: Layer) -> &'static str {
    match layer {
        Layer::Wire => "",
        Layer::Secure => "[scp03] ",
    }
}

/// Renders a command line: `>> 80CA0066 00`, data redacted when secret.
pub fn render_command(layer: Layer, cmd: &Command) -> String {
    let mut s = format!("{}>> {}", prefix(layer), hex::encode_upper(cmd.header()));
    if !cmd.data().is_empty() {
        s.push(' ');
        s.push_str(&hex::encode_upper(cmd.lc_field()));
        s.push(' ');
        if is_secret(cmd) {
            s.push_str(&format!("<redacted {} bytes>", cmd.data().len()));
        } else {
            s.push_str(&hex::encode_upper(cmd.data()));
        }
    }
    if let Some(ne) = cmd.ne() {
        s.push_str(&format!(" Le={ne}"));
    }
    s
}

/// Renders a response line: `<< 6F10… 9000`, data redacted when the command was secret.
pub fn render_response(layer: Layer, cmd: &Command, resp: &Response) -> String {
    let data = if resp.data.is_empty() {
        String::new()
    } else if is_secret(cmd) {
        format!("<redacted {} bytes> ", resp.data.len())
    } else {
        format!("{} ", hex::encode_upper(&resp.data))
    };
    if resp.sw.is_success() {
        format!("{}<< {data}9000", prefix(layer))
    } else {
        format!(
            "{}<< {data}{:04X} ({})",
            prefix(layer),
            resp.sw.0,
            resp.sw.meaning()
        )
    }
}

/// Where trace lines go.
pub trait TraceSink: Send {
    /// Receives one rendered line.
    fn line(&mut self, line: &str);
}

/// Writes trace lines to standard error.
#[derive(Debug, Default)]
pub struct StderrTrace;

impl TraceSink for StderrTrace {
    fn line(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

/// Collects trace lines in memory (tests, `--json` output).
#[derive(Debug, Default, Clone)]
pub struct MemoryTrace(pub Arc<Mutex<Vec<String>>>);

impl MemoryTrace {
    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl TraceSink for MemoryTrace {
    fn line(&mut self, line: &str) {
        if let Ok(mut v) = self.0.lock() {
            v.push(line.to_string());
        }
    }
}

/// Writes trace lines to a file (per-card logs of a batch).
#[derive(Debug)]
pub struct FileTrace(std::io::BufWriter<std::fs::File>);

impl FileTrace {
    /// Creates (truncating) the log file.
    pub fn create(path: &std::path::Path) -> crate::Result<FileTrace> {
        std::fs::File::create(path)
            .map(|f| FileTrace(std::io::BufWriter::new(f)))
            .map_err(|source| crate::Error::File {
                path: path.to_path_buf(),
                source,
            })
    }
}

impl TraceSink for FileTrace {
    fn line(&mut self, line: &str) {
        use std::io::Write;
        let _ = writeln!(self.0, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use card_wire::sw::StatusWord;

    #[test]
    fn verify_is_redacted_even_unmarked() {
        let cmd = Command::new(0, 0x20, 0, 0x80)
            .with_data(b"1234".to_vec())
            .unwrap();
        let line = render_command(Layer::Wire, &cmd);
        assert!(line.contains("<redacted 4 bytes>"), "{line}");
        assert!(!line.contains("31323334"), "{line}");
    }

    #[test]
    fn marked_commands_and_their_responses_are_redacted() {
        let cmd = Command::new(0x80, 0xE2, 0x80, 0)
            .with_data(vec![0xAB; 16])
            .unwrap()
            .sensitive();
        assert!(!render_command(Layer::Secure, &cmd).contains("ABAB"));
        let r = Response::new(vec![0xCD; 3], StatusWord::SUCCESS);
        let line = render_response(Layer::Secure, &cmd, &r);
        assert!(
            line.starts_with("[scp03] << <redacted 3 bytes> 9000"),
            "{line}"
        );
    }

    #[test]
    fn plain_commands_are_shown() {
        let cmd = Command::new(0, 0xA4, 4, 0)
            .with_data(vec![0xA0, 0, 0, 1, 0x51])
            .unwrap()
            .with_le(256)
            .unwrap();
        assert_eq!(
            render_command(Layer::Wire, &cmd),
            ">> 00A40400 05 A000000151 Le=256"
        );
    }
}
