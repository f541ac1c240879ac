//! The host side, with nothing but `card-wire`: select the issuer security domain, open an
//! SCP03 session with the card's keys, then LOAD the load file naming [`crate::CLASS`] and
//! INSTALL an instance — each command wrapped by the session, each answer unwrapped.

use card_wire::gp::{self, InstallSpec};
use card_wire::scp03::handshake::{HostHandshake, HostOptions};
use card_wire::scp03::{Scp03Error, SecureSession, SecurityLevel, StaticKeys};
use card_wire::{Command, Response, StatusWord, Transport, TransportError};

/// What went wrong on the host side.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The card (or reader) did not answer.
    #[error("card: {0}")]
    Transport(#[from] TransportError),
    /// The secure channel failed.
    #[error("secure channel: {0}")]
    Scp03(#[from] Scp03Error),
    /// A command could not be built or an answer read.
    #[error("{0}")]
    Apdu(#[from] card_wire::ApduError),
    /// A GlobalPlatform command could not be built.
    #[error("{0}")]
    Gp(#[from] gp::GpError),
    /// The card refused a step.
    #[error("{step}: the card answered {sw}")]
    Refused {
        /// What was being done.
        step: &'static str,
        /// The card's status word.
        sw: StatusWord,
    },
}

/// Sends one plain command.
pub fn send(card: &mut dyn Transport, cmd: &Command) -> Result<Response, HostError> {
    Ok(Response::parse(&card.transmit(&cmd.to_bytes())?)?)
}

/// SELECT by AID (`00 A4 04 00`).
pub fn select(card: &mut dyn Transport, aid: &[u8]) -> Result<Response, HostError> {
    send(
        card,
        &Command::new(0x00, 0xA4, 0x04, 0x00)
            .with_data(aid.to_vec())?
            .with_le(256)?,
    )
}

/// An open SCP03 session to the selected security domain.
pub struct Session {
    scp: SecureSession,
}

impl Session {
    /// Selects the security domain `sd` and authenticates with `keys` at security level
    /// `level` (INITIALIZE UPDATE, EXTERNAL AUTHENTICATE).
    pub fn open(
        card: &mut dyn Transport,
        sd: &[u8],
        keys: StaticKeys,
        level: SecurityLevel,
    ) -> Result<Session, HostError> {
        let r = select(card, sd)?;
        if !r.sw.is_success() {
            return Err(HostError::Refused {
                step: "SELECT of the security domain",
                sw: r.sw,
            });
        }
        let opts = HostOptions {
            level,
            ..HostOptions::default()
        };
        let hs = HostHandshake::random(keys, opts)?;
        let iu = send(card, &hs.initialize_update()?)?;
        let (ea, scp, _) = hs.complete(&iu, Some(sd))?;
        let r = send(card, &ea)?;
        if !r.sw.is_success() {
            return Err(HostError::Refused {
                step: "EXTERNAL AUTHENTICATE",
                sw: r.sw,
            });
        }
        Ok(Session { scp })
    }

    /// Sends one command under the session and returns the unwrapped answer.
    pub fn send(&mut self, card: &mut dyn Transport, cmd: &Command) -> Result<Response, HostError> {
        let wrapped = self.scp.wrap_command(cmd)?;
        let r = send(card, &wrapped)?;
        Ok(self.scp.unwrap_response(&r)?)
    }

    fn expect(
        &mut self,
        card: &mut dyn Transport,
        cmd: &Command,
        step: &'static str,
    ) -> Result<Response, HostError> {
        let r = self.send(card, cmd)?;
        if r.sw.is_success() {
            Ok(r)
        } else {
            Err(HostError::Refused { step, sw: r.sw })
        }
    }

    /// INSTALL [for load] and LOAD of the simulator load file that names `class` for
    /// `module` in `package`.
    pub fn load(
        &mut self,
        card: &mut dyn Transport,
        package: &[u8],
        module: &[u8],
        class: &str,
    ) -> Result<(), HostError> {
        let file = gp::sim_load_file(package, &[(module.to_vec(), class.to_string())]);
        let hash = gp::load_file_hash(&file)?;
        self.expect(
            card,
            &gp::install_for_load(package, &[], &hash)?,
            "INSTALL [for load]",
        )?;
        for block in gp::load_blocks(&file)? {
            self.expect(card, &block, "LOAD")?;
        }
        Ok(())
    }

    /// INSTALL [for install and make selectable] of `instance` from `module` in `package`,
    /// with install parameters `params`; the card's answer as it came.
    pub fn install(
        &mut self,
        card: &mut dyn Transport,
        package: &[u8],
        module: &[u8],
        instance: &[u8],
        params: &[u8],
    ) -> Result<Response, HostError> {
        let cmd = gp::install(&InstallSpec {
            package: package.to_vec(),
            module: module.to_vec(),
            instance: instance.to_vec(),
            privileges: vec![0x00],
            params: params.to_vec(),
            selectable: true,
        })?;
        self.send(card, &cmd)
    }
}

/// Loads the counter's package and installs [`crate::INSTANCE`] with `step`, on a card whose
/// issuer security domain is `isd` with `keys`.
pub fn load_and_install(
    card: &mut dyn Transport,
    isd: &[u8],
    keys: StaticKeys,
    step: u8,
) -> Result<(), HostError> {
    let mut s = Session::open(card, isd, keys, SecurityLevel::FULL)?;
    s.load(card, &crate::PACKAGE, &crate::MODULE, crate::CLASS)?;
    let r = s.install(
        card,
        &crate::PACKAGE,
        &crate::MODULE,
        &crate::INSTANCE,
        &crate::install_params(step),
    )?;
    if !r.sw.is_success() {
        return Err(HostError::Refused {
            step: "INSTALL [for install]",
            sw: r.sw,
        });
    }
    Ok(())
}
