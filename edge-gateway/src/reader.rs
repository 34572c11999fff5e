//! Polling the devices: each poll of each device yields a [`Sample`] or an error beside the
//! others, so one failing device never fails (or stalls, thanks to per-call timeouts and
//! backoff) the rest.

use crate::config::{DeviceConfig, Transport};
use crate::modbus::ModbusLink;
use crate::mqtt_devices::MqttDeviceState;
use crate::sample::{DeviceValues, Sample};
use crate::sunspec::{self, DiscoveryError, ModelHeader, ReadFailure};
use chrono::DateTime;
use gridmesh_runtime::clock::Clock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a device could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Connection or timeout problem (retried with backoff).
    #[error("device `{device}` is unreachable {detail}")]
    Unreachable {
        /// The device name.
        device: String,
        /// What happened.
        detail: String,
    },
    /// SunSpec discovery failed.
    #[error("device `{device}` ({location}): {source}")]
    Discovery {
        /// The device name.
        device: String,
        /// Where it is.
        location: String,
        /// Why.
        source: DiscoveryError,
    },
    /// The device's SunSpec models do not fit its role.
    #[error("device `{device}` ({location}): {message}")]
    Unsupported {
        /// The device name.
        device: String,
        /// Where it is.
        location: String,
        /// The explanation.
        message: String,
    },
    /// The device refused a read.
    #[error("device `{device}` refused a read ({detail}); will rediscover its models")]
    Refused {
        /// The device name.
        device: String,
        /// The Modbus exception.
        detail: String,
    },
    /// An MQTT device has not published (yet).
    #[error(
        "MQTT device `{device}` has published nothing usable yet on {topic}; check the topic and that the device is online"
    )]
    NoData {
        /// The device name.
        device: String,
        /// Its topic.
        topic: String,
    },
}

/// A Modbus device with its discovered SunSpec models.
#[derive(Debug)]
pub struct ModbusDevice {
    /// Its configuration.
    pub config: DeviceConfig,
    /// The connection.
    pub link: ModbusLink,
    models: Option<Vec<ModelHeader>>,
}

impl ModbusDevice {
    /// A device, not yet connected.
    pub fn new(config: DeviceConfig, timeout: Duration) -> Self {
        ModbusDevice {
            link: ModbusLink::new(config.clone(), timeout),
            config,
            models: None,
        }
    }

    /// The models the device is read through (after the first successful poll).
    pub fn models(&self) -> Option<&[ModelHeader]> {
        self.models.as_deref()
    }

    fn transport_error(&self, e: ReadFailure) -> DeviceError {
        match e {
            ReadFailure::Exception(detail) => DeviceError::Refused {
                device: self.config.name.clone(),
                detail,
            },
            ReadFailure::Transport(detail) => DeviceError::Unreachable {
                device: self.config.name.clone(),
                detail,
            },
        }
    }

    /// Discovers (once) and reads the device.
    pub async fn poll(&mut self) -> Result<DeviceValues, DeviceError> {
        if self.models.is_none() {
            let chain = match sunspec::discover(&mut self.link, self.config.sunspec_base).await {
                Ok(chain) => chain,
                Err(DiscoveryError::Read(e)) => return Err(self.transport_error(e)),
                Err(source) => {
                    return Err(DeviceError::Discovery {
                        device: self.config.name.clone(),
                        location: self.config.location(),
                        source,
                    });
                }
            };
            let picked = sunspec::select(self.config.role, &chain).map_err(|message| {
                DeviceError::Unsupported {
                    device: self.config.name.clone(),
                    location: self.config.location(),
                    message,
                }
            })?;
            tracing::info!(
                device = %self.config.name,
                models = ?picked.iter().map(|m| m.id).collect::<Vec<_>>(),
                "SunSpec models discovered"
            );
            self.models = Some(picked);
        }
        let models = self.models.clone().unwrap_or_default();
        let mut registers = Vec::with_capacity(models.len());
        for model in &models {
            match sunspec::read_model(&mut self.link, model).await {
                Ok(regs) => registers.push(regs),
                Err(e) => {
                    if matches!(e, ReadFailure::Exception(_)) {
                        self.models = None;
                    }
                    return Err(self.transport_error(e));
                }
            }
        }
        Ok(sunspec::decode(self.config.role, &registers))
    }

    /// The immediate-controls model (123) the inverter offers, once discovered.
    pub fn immediate_controls(&self) -> Option<ModelHeader> {
        self.models
            .as_ref()
            .and_then(|m| m.iter().find(|m| m.id == sunspec::IMMEDIATE_CONTROLS))
            .copied()
    }

    /// Writes the inverter's active power limit through model 123: `Some(pct_milli)` limits
    /// to that share (thousandths of a percent) of the rated power with `WMaxLimPct_SF` = `sf`
    /// (as read from the device) and a reversion timeout of `revert_s` seconds; `None`
    /// disables the limit.
    pub async fn write_pv_limit(
        &mut self,
        pct_milli: Option<i64>,
        sf: i16,
        revert_s: u16,
    ) -> Result<(), DeviceError> {
        let Some(m123) = self.immediate_controls() else {
            return Err(DeviceError::Unsupported {
                device: self.config.name.clone(),
                location: self.config.location(),
                message: "PV curtailment needs SunSpec model 123 (immediate controls), which this inverter does not expose".into(),
            });
        };
        for (offset, values) in sunspec::limit_123(pct_milli, sf, revert_s) {
            self.link
                .write(m123.address + offset, &values)
                .await
                .map_err(|e| self.transport_error(e))?;
        }
        Ok(())
    }

    /// Applies model-124 steering writes (charge > 0, discharge < 0, 0 = automatic) that
    /// revert to automatic after `revert_s` seconds unless renewed.
    pub async fn steer(&mut self, watts: i64, revert_s: u16) -> Result<(), DeviceError> {
        let Some(m124) = self
            .models
            .as_ref()
            .and_then(|m| m.iter().find(|m| m.id == 124))
            .copied()
        else {
            return Err(DeviceError::Unsupported {
                device: self.config.name.clone(),
                location: self.config.location(),
                message:
                    "battery steering needs SunSpec model 124, which this device does not expose"
                        .into(),
            });
        };
        let regs = sunspec::read_model(&mut self.link, &m124)
            .await
            .map_err(|e| self.transport_error(e))?;
        let w_max = sunspec_scaled(regs[2], regs[18]);
        let rate_sf = regs[25] as i16;
        for (offset, values) in sunspec::steer_124(watts, w_max, rate_sf, revert_s) {
            self.link
                .write(m124.address + offset, &values)
                .await
                .map_err(|e| self.transport_error(e))?;
        }
        Ok(())
    }
}

fn sunspec_scaled(value: u16, sf: u16) -> i64 {
    crate::sample::scale_to_milli(i64::from(value), sf as i16) / 1000
}

/// An MQTT device: its state is filled by the MQTT router.
#[derive(Debug, Clone)]
pub struct MqttDevice {
    /// Its configuration.
    pub config: DeviceConfig,
    /// The latest values.
    pub state: Arc<Mutex<MqttDeviceState>>,
}

/// Any device.
#[derive(Debug)]
pub enum Device {
    /// Read over Modbus.
    Modbus(Box<ModbusDevice>),
    /// Fed over MQTT.
    Mqtt(MqttDevice),
}

impl Device {
    /// A device for a config entry.
    pub fn new(config: DeviceConfig, timeout: Duration) -> Self {
        match config.transport {
            Transport::Mqtt => Device::Mqtt(MqttDevice {
                config,
                state: Default::default(),
            }),
            _ => Device::Modbus(Box::new(ModbusDevice::new(config, timeout))),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &DeviceConfig {
        match self {
            Device::Modbus(d) => &d.config,
            Device::Mqtt(d) => &d.config,
        }
    }

    /// Polls once. A Modbus sample is timestamped at the middle of its request/response
    /// exchange (the best estimate of when the device sampled its registers); an MQTT sample
    /// carries the time its message arrived.
    pub async fn poll(&mut self, clock: &Clock, stale_ms: i64) -> Sample {
        let name = self.config().name.clone();
        let now = clock.now();
        match self {
            Device::Modbus(d) => {
                let values = d.poll().await.map_err(|e| e.to_string());
                let done = clock.now();
                Sample {
                    at: now + (done - now) / 2,
                    device: name,
                    values,
                    stale: false,
                }
            }
            Device::Mqtt(d) => {
                let state = d.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
                match state.updated_ms {
                    None => Sample {
                        at: now,
                        device: name.clone(),
                        values: Err(DeviceError::NoData {
                            device: name,
                            topic: d.config.topic.clone().unwrap_or_default(),
                        }
                        .to_string()),
                        stale: false,
                    },
                    Some(updated) => {
                        let at = DateTime::from_timestamp_millis(updated).unwrap_or(now);
                        Sample {
                            // The value is as old as the message that carried it.
                            at,
                            device: name,
                            values: Ok(state.values),
                            stale: now.timestamp_millis() - updated > stale_ms,
                        }
                    }
                }
            }
        }
    }
}

/// Polls every device concurrently; one result per device, in order.
pub async fn poll_all(devices: &mut [Device], clock: &Clock, stale_ms: i64) -> Vec<Sample> {
    futures::future::join_all(devices.iter_mut().map(|d| d.poll(clock, stale_ms))).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MqttFormat, Role};

    #[tokio::test]
    async fn mqtt_values_go_stale() {
        let epoch = chrono::DateTime::parse_from_rfc3339("2026-06-21T12:00:00Z")
            .unwrap()
            .to_utc();
        let clock = Clock::scaled(epoch, 1.0);
        let config = DeviceConfig::mqtt("plug", Role::Inverter, MqttFormat::Tasmota, "plug");
        let mut device = Device::new(config.clone(), Duration::from_millis(100));
        let sample = device.poll(&clock, 60_000).await;
        assert!(
            sample
                .values
                .unwrap_err()
                .contains("published nothing usable yet")
        );
        let Device::Mqtt(mqtt) = &device else {
            unreachable!()
        };
        let now = clock.now().timestamp_millis();
        mqtt.state.lock().unwrap().apply(
            &config,
            "tele/plug/SENSOR",
            br#"{"ENERGY":{"Total":1.0}}"#,
            now - 30_000,
        );
        let fresh = device.poll(&clock, 60_000).await;
        assert!(!fresh.stale && fresh.values.is_ok());
        assert_eq!(
            fresh.at.timestamp_millis(),
            now - 30_000,
            "timestamped when published"
        );
        let Device::Mqtt(mqtt) = &device else {
            unreachable!()
        };
        mqtt.state.lock().unwrap().updated_ms = Some(now - 61_000);
        assert!(device.poll(&clock, 60_000).await.stale);
    }
}
