//! Admin subcommands: one RPC each, over mTLS with an admin certificate.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use enos_signer_proto::v1::{self, admin_client::AdminClient};
use zeroize::Zeroizing;

use crate::Connection;

#[derive(Subcommand)]
pub(crate) enum AdminCommand {
    /// Create a device, or replace its secret (read from --secret-file or stdin).
    PutDevice {
        #[command(flatten)]
        device: DeviceArgs,
        #[command(flatten)]
        secret: SecretArgs,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Replace a device's secret (read from --secret-file or stdin).
    RotateSecret {
        #[command(flatten)]
        device: DeviceArgs,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// Let a device get credentials again.
    Enable {
        #[command(flatten)]
        device: DeviceArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// Stop issuing credentials to a device.
    Disable {
        #[command(flatten)]
        device: DeviceArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// Remove a device and its secret.
    Delete {
        #[command(flatten)]
        device: DeviceArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a device (never its secret).
    Get {
        #[command(flatten)]
        device: DeviceArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// List devices, all pages.
    List {
        /// Only this product.
        #[arg(long)]
        product_key: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Make SUB a sub-device of gateway GW.
    Bind {
        /// Gateway product key.
        gateway_product_key: String,
        /// Gateway device key.
        gateway_device_key: String,
        /// Sub-device product key.
        sub_product_key: String,
        /// Sub-device device key.
        sub_device_key: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Detach a sub-device from its gateway.
    Unbind {
        #[command(flatten)]
        device: DeviceArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// Register a device without a secret: it activates itself with its
    /// product's secret (dynamic activation), and its secret goes straight
    /// into custody. A device that had a secret loses it.
    AwaitActivation {
        #[command(flatten)]
        device: DeviceArgs,
        /// Register it disabled.
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Create a product's secret (read from --secret-file or stdin).
    PutProductSecret {
        /// The product key.
        product_key: String,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// Replace a product's secret (read from --secret-file or stdin).
    RotateProductSecret {
        /// The product key.
        product_key: String,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// Remove a product's secret: its devices can no longer activate.
    DeleteProductSecret {
        /// The product key.
        product_key: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a product's secret version and activation policy (never the secret).
    GetProduct {
        /// The product key.
        product_key: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Args)]
pub(crate) struct DeviceArgs {
    /// The product key.
    product_key: String,
    /// The device key.
    device_key: String,
}

impl DeviceArgs {
    fn to_ref(&self) -> v1::DeviceRef {
        v1::DeviceRef::new(self.product_key.clone(), self.device_key.clone())
    }
}

/// Where a device secret comes from: never argv.
#[derive(Args)]
pub(crate) struct SecretArgs {
    /// A file holding the secret on one line; without it, stdin is read
    /// (on a terminal: a prompt that does not echo).
    #[arg(long)]
    secret_file: Option<PathBuf>,
}

impl SecretArgs {
    pub(crate) fn read(&self) -> Result<Zeroizing<String>> {
        use std::io::{IsTerminal, Read};
        let (text, source) = match &self.secret_file {
            Some(path) => (
                Zeroizing::new(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                path.display().to_string(),
            ),
            None if std::io::stdin().is_terminal() => (
                Zeroizing::new(
                    rpassword::prompt_password("secret (not echoed): ")
                        .context("reading the secret from the terminal")?,
                ),
                "the terminal".to_owned(),
            ),
            None => {
                let mut text = Zeroizing::new(String::new());
                std::io::stdin()
                    .lock()
                    .read_to_string(&mut text)
                    .context("reading the secret from stdin")?;
                (text, "stdin".to_owned())
            }
        };
        one_line(&text, &source)
    }
}

/// The secret `text` holds: one line, trailing line ends dropped. More
/// than one line is refused (a secret never spans lines: a second line is
/// a mistake, like a file with two secrets), naming the source, never the
/// text.
fn one_line(text: &str, source: &str) -> Result<Zeroizing<String>> {
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.contains(['\r', '\n']) {
        bail!(
            "{source} holds more than one line: give the secret alone on one line (a trailing newline is fine)"
        );
    }
    if secret.is_empty() {
        bail!("the secret from {source} is empty");
    }
    Ok(Zeroizing::new(secret.to_owned()))
}

fn show(device: &v1::Device) {
    let gateway = device
        .gateway
        .as_ref()
        .map(|g| format!(" gateway={}/{}", g.product_key, g.device_key))
        .unwrap_or_default();
    let awaiting = if device.awaiting_activation {
        " awaiting_activation"
    } else {
        ""
    };
    say!(
        "{}/{} enabled={} secret_version={}{gateway}{awaiting}",
        device.product_key,
        device.device_key,
        device.enabled,
        device.secret_version
    );
}

fn status(e: tonic::Status) -> anyhow::Error {
    crate::handshake::status(e)
}

impl AdminCommand {
    pub(crate) async fn run(self) -> Result<()> {
        match self {
            AdminCommand::PutDevice {
                device,
                secret,
                disabled,
                connection,
            } => {
                let secret = secret.read()?;
                let mut client = AdminClient::new(connection.channel().await?);
                let d = client
                    .put_device(v1::PutDeviceRequest {
                        device: Some(device.to_ref()),
                        device_secret: secret.to_string(),
                        enabled: !disabled,
                        awaiting_activation: false,
                    })
                    .await
                    .map_err(status)?;
                show(d.get_ref());
            }
            AdminCommand::RotateSecret {
                device,
                secret,
                connection,
            } => {
                let secret = secret.read()?;
                let mut client = AdminClient::new(connection.channel().await?);
                let d = client
                    .rotate_secret(v1::RotateSecretRequest {
                        device: Some(device.to_ref()),
                        new_device_secret: secret.to_string(),
                    })
                    .await
                    .map_err(status)?;
                show(d.get_ref());
            }
            AdminCommand::Enable { device, connection } => {
                set_enabled(&device, &connection, true).await?;
            }
            AdminCommand::Disable { device, connection } => {
                set_enabled(&device, &connection, false).await?;
            }
            AdminCommand::Delete { device, connection } => {
                let mut client = AdminClient::new(connection.channel().await?);
                client
                    .delete_device(device.to_ref())
                    .await
                    .map_err(status)?;
                say!("deleted {}/{}", device.product_key, device.device_key);
            }
            AdminCommand::Get { device, connection } => {
                let mut client = AdminClient::new(connection.channel().await?);
                let d = client.get_device(device.to_ref()).await.map_err(status)?;
                show(d.get_ref());
            }
            AdminCommand::List {
                product_key,
                connection,
            } => {
                let mut client = AdminClient::new(connection.channel().await?);
                let mut page_token = String::new();
                loop {
                    let page = client
                        .list_devices(v1::ListDevicesRequest {
                            product_key: product_key.clone().unwrap_or_default(),
                            page_size: 1000,
                            page_token,
                        })
                        .await
                        .map_err(status)?
                        .into_inner();
                    page.devices.iter().for_each(show);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
            }
            AdminCommand::Bind {
                gateway_product_key,
                gateway_device_key,
                sub_product_key,
                sub_device_key,
                connection,
            } => {
                let mut client = AdminClient::new(connection.channel().await?);
                let d = client
                    .bind_sub_device(v1::BindSubDeviceRequest {
                        gateway: Some(v1::DeviceRef::new(gateway_product_key, gateway_device_key)),
                        sub_device: Some(v1::DeviceRef::new(sub_product_key, sub_device_key)),
                    })
                    .await
                    .map_err(status)?;
                show(d.get_ref());
            }
            AdminCommand::Unbind { device, connection } => {
                let mut client = AdminClient::new(connection.channel().await?);
                let d = client
                    .unbind_sub_device(v1::UnbindSubDeviceRequest {
                        sub_device: Some(device.to_ref()),
                    })
                    .await
                    .map_err(status)?;
                show(d.get_ref());
            }
            AdminCommand::AwaitActivation {
                device,
                disabled,
                connection,
            } => {
                let mut client = AdminClient::new(connection.channel().await?);
                let d = client
                    .put_device(v1::PutDeviceRequest {
                        device: Some(device.to_ref()),
                        device_secret: String::new(),
                        enabled: !disabled,
                        awaiting_activation: true,
                    })
                    .await
                    .map_err(status)?;
                show(d.get_ref());
            }
            product @ (AdminCommand::PutProductSecret { .. }
            | AdminCommand::RotateProductSecret { .. }
            | AdminCommand::DeleteProductSecret { .. }
            | AdminCommand::GetProduct { .. }) => product.run_product().await?,
        }
        Ok(())
    }

    /// The product-secret commands.
    async fn run_product(self) -> Result<()> {
        let rotate = matches!(self, AdminCommand::RotateProductSecret { .. });
        match self {
            AdminCommand::PutProductSecret {
                product_key,
                secret,
                connection,
            }
            | AdminCommand::RotateProductSecret {
                product_key,
                secret,
                connection,
            } => {
                let secret = secret.read()?;
                let request = v1::PutProductSecretRequest {
                    product: Some(v1::ProductRef { product_key }),
                    product_secret: secret.to_string(),
                };
                let mut client = AdminClient::new(connection.channel().await?);
                let p = if rotate {
                    client.rotate_product_secret(request).await
                } else {
                    client.put_product_secret(request).await
                }
                .map_err(status)?;
                show_product(p.get_ref());
            }
            AdminCommand::DeleteProductSecret {
                product_key,
                connection,
            } => {
                let mut client = AdminClient::new(connection.channel().await?);
                client
                    .delete_product_secret(v1::ProductRef {
                        product_key: product_key.clone(),
                    })
                    .await
                    .map_err(status)?;
                say!("deleted the secret of product {product_key}");
            }
            AdminCommand::GetProduct {
                product_key,
                connection,
            } => {
                let mut client = AdminClient::new(connection.channel().await?);
                let p = client
                    .get_product(v1::ProductRef { product_key })
                    .await
                    .map_err(status)?;
                show_product(p.get_ref());
            }
            _ => unreachable!("only product commands reach run_product"),
        }
        Ok(())
    }
}

fn show_product(product: &v1::Product) {
    say!(
        "product {} secret_version={} dynamic_activation={}",
        product.product_key,
        product.secret_version,
        product.dynamic_activation
    );
}

async fn set_enabled(device: &DeviceArgs, connection: &Connection, enabled: bool) -> Result<()> {
    let mut client = AdminClient::new(connection.channel().await?);
    let d = client
        .set_enabled(v1::SetEnabledRequest {
            device: Some(device.to_ref()),
            enabled,
        })
        .await
        .map_err(status)?;
    show(d.get_ref());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_with_trailing_line_ends_only() {
        for ok in ["Secret1", "Secret1\n", "Secret1\r\n", "Secret1\n\n"] {
            assert_eq!(one_line(ok, "f").expect(ok).as_str(), "Secret1");
        }
        let two = one_line("Secret1\nSecret2\n", "stdin").expect_err("two lines");
        assert!(
            two.to_string().contains("stdin holds more than one line"),
            "{two}"
        );
        assert!(!two.to_string().contains("Secret"), "{two}");
        assert!(one_line("\n", "f").is_err());
    }
}
