//! What the JPKI issuer's tests (`issuer.rs`, `csr16.rs`) share: a user-authentication CA
//! backed by a test-pki CA (certificates and CRLs).
#![allow(dead_code)]

use std::time::SystemTime;
use test_pki::TestCa;
use tsm_server::issuer::UaCa;

/// A [`UaCa`] signing with a test-pki CA.
pub struct TestCaUa(pub TestCa);

impl UaCa for TestCaUa {
    fn certify(
        &self,
        key: &p256::PublicKey,
        opaque_id: &str,
        serial: u32,
        nb: SystemTime,
        na: SystemTime,
    ) -> Result<Vec<u8>, String> {
        use der::Encode;
        self.0
            .issue_auth(key, opaque_id, serial, nb, na)
            .map_err(|e| e.to_string())?
            .to_der()
            .map_err(|e| e.to_string())
    }
    fn certificate_der(&self) -> Vec<u8> {
        self.0.certificate_der().unwrap()
    }
    fn crl(
        &self,
        number: u64,
        this_update: SystemTime,
        next_update: SystemTime,
        entries: &[tsm_server::issuer::crl::CrlEntry],
    ) -> Result<Vec<u8>, String> {
        use der::Encode;
        let entries: Vec<test_pki::CrlEntry> = entries
            .iter()
            .map(|e| test_pki::CrlEntry {
                serial: e.serial.clone(),
                revoked_at: e.revoked_at,
                reason: Some(e.reason),
            })
            .collect();
        self.0
            .crl_entries(number, this_update, next_update, &entries)
            .map_err(|e| e.to_string())?
            .to_der()
            .map_err(|e| e.to_string())
    }
}
