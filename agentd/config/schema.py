"""The configuration schema and loader.

Config is YAML, validated once into frozen pydantic models and passed down; no other
module reads files or environment variables for settings. Errors name file, line and key.
Relative paths resolve against the config file's folder."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    model_validator,
)

from agentd.config.base import ConfigPath, Name, _Model
from agentd.config.fleet_state import FleetStateWrite
from agentd.config.metrics import MetricsConfig
from agentd.config.models import DelayModelConfig, EmbeddingModelConfig, LlamaModelConfig, ModelConfig, OnnxModelConfig
from agentd.errors import ConfigError


def default_node_id() -> str:
    """The hostname, lower-cased, with anything outside [a-z0-9_-] replaced by '-'."""
    name = re.sub(r"[^a-z0-9_-]", "-", socket.gethostname().lower()).strip("-_") or "node"
    return name[:63]


def _default_data_dir() -> str:
    return os.environ.get("STATE_DIRECTORY", "").split(":")[0] or str(Path("var").resolve())


class NodeConfig(_Model):
    id: Name = Field(default_factory=default_node_id)
    fleet: Name = "default"
    data_dir: ConfigPath = Field(default_factory=_default_data_dir)


class LifecycleConfig(_Model):
    stage: Literal["dev", "canary", "prod"] = "dev"
    release: str = Field(default="unreleased", min_length=1, max_length=64)


class TlsConfig(_Model):
    ca: ConfigPath | None = None
    cert: ConfigPath | None = None
    key: ConfigPath | None = None


def _protocol_text(value: Any) -> Any:
    """YAML reads ``protocol: 5`` as a number; the setting is a name."""
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else value


class MqttConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: ConfigPath | None = None
    max_payload_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    digest_interval_s: float = Field(default=30.0, ge=0.1, le=86400)
    # auto: MQTT 5, or 3.1.1 when the broker refuses 5 (DESIGN section 6)
    protocol: Annotated[Literal["auto", "5", "3.1.1"], BeforeValidator(_protocol_text)] = "auto"
    receive_maximum: int = Field(default=1000, ge=1, le=65535)


class MeshConfig(_Model):
    """What this node accepts from the wire (docs/SECURITY.md)."""

    # v1 envelopes and commands do not sign the fleet; accept them only during a rolling upgrade
    accept_v1: bool = False
    # an envelope, command or peer decision dated further ahead of local time than this is refused
    max_clock_skew_s: float = Field(default=30.0, ge=1, le=3600)
    # a peer's HLC may move this node's clock at most this far ahead of its own wall clock
    max_clock_advance_ms: int = Field(default=1000, ge=0, le=60_000)
    # refusals of unsigned or malformed input are audited as one summary record per reason per interval
    refusal_summary_s: float = Field(default=60.0, ge=1, le=86400)
    # with trust.allow_unknown_peers: at most this many peer keys are learned on first use
    max_learned_peers: int = Field(default=256, ge=0, le=100_000)


class OperatorConfig(_Model):
    name: str = Field(min_length=1, max_length=64)
    key: str = Field(min_length=40, max_length=64, description="base64 raw Ed25519 public key")
    role: Literal["viewer", "operator", "admin"]


class TrustConfig(_Model):
    operators: list[OperatorConfig] = Field(default_factory=list)
    peers: dict[Name, str] = Field(default_factory=dict)
    allow_unknown_peers: bool = False
    # the node's public key as pinned at install: `agentd audit verify` checks the trail against it
    # (before keys/node.pub, which the service user could replace; this file is root's)
    audit_public_key: str | None = Field(default=None, min_length=40, max_length=64, description="base64 raw Ed25519 public key")


class RetentionConfig(_Model):
    max_age_days: float = Field(default=30.0, gt=0)
    max_db_mb: float = Field(default=512.0, gt=1)
    outbox_max_rows: int = Field(default=100_000, ge=100)
    min_keep_hours: float = Field(default=1.0, ge=0)
    interval_s: float = Field(default=600.0, gt=0)


class StateConfig(_Model):
    synchronous: Literal["full", "normal"] = "full"
    retention: RetentionConfig = RetentionConfig()
    checkpoint_every: int = Field(default=1000, ge=1, le=1_000_000)
    checkpoint_interval_s: float = Field(default=300.0, gt=0)
    min_free_mb: float = Field(default=64.0, ge=0)  # `agentd doctor` fails below this much free space


class SimulatorConfig(_Model):
    enabled: bool = False
    skill: str | None = None
    rate_per_s: float = Field(default=1.0, gt=0, le=10_000)
    seed: int | None = None


class DaemonConfig(_Model):
    mode: Literal["auto", "rules_only", "observe", "manual"] = "auto"
    socket: ConfigPath | None = None
    max_pending: int = Field(default=10_000, ge=1)
    drain_timeout_s: float = Field(default=5.0, gt=0, le=300)
    deadline_reserve_ms: float = Field(default=3.0, ge=0, le=1000)
    watchdog_interval_s: float = Field(default=5.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    simulator: SimulatorConfig = SimulatorConfig()


class FieldSpec(_Model):
    type: Literal["number", "integer", "string", "boolean"]
    required: bool = True
    min: float | None = None
    max: float | None = None
    max_length: int = Field(default=256, ge=1, le=65536)
    default: float | int | str | bool | None = None

    @model_validator(mode="after")
    def _check(self) -> FieldSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class PromoteConfig(_Model):
    """A stage that earns (or loses) the right to act from the node's labels."""

    auto: bool = False  # off by default: the configured `shadow:` holds until a person changes it
    min_labels: int = Field(default=20, ge=5, le=100_000)  # labelled events it and the rules both answered
    window: int = Field(default=200, ge=5, le=100_000)  # judged on the newest this many of those
    margin: float = Field(default=0.0, ge=0, le=1)  # how much better than the rules a shadow must be
    min_labellers: int = Field(default=2, ge=1, le=1000)  # distinct people among those labels, for a promotion


class StageConfig(_Model):
    model: Name
    min_confidence: float = Field(default=0.0, ge=0, le=1)
    map: dict[str, str] = Field(default_factory=dict)
    timeout_ms: float | None = Field(default=None, gt=0)
    shadow: bool = False  # runs on the same events, recorded, never acted on
    # With a model card: an input scoring above this (1.0: beyond the training data's own
    # 99th percentile) falls back as out_of_distribution. null: the card is only recorded.
    max_ood_score: float | None = Field(default=1.0, gt=0)
    promote: PromoteConfig = PromoteConfig()


class RuleConfig(_Model):
    name: str = Field(min_length=1, max_length=64)
    when: str = Field(default="true", min_length=1, max_length=4096)
    action: str
    default: bool = False


class GuardConfig(_Model):
    name: str = Field(min_length=1, max_length=64)
    when: str = Field(min_length=1, max_length=4096)
    action: str


class ApprovalConfig(_Model):
    actions: list[str] = Field(default_factory=list)
    interim: str | None = None
    timeout_s: float = Field(default=900.0, gt=0, le=30 * 86400)
    on_timeout: str | None = None
    on_reject: str | None = None


UncertainReason = Literal["low_confidence", "out_of_distribution", "possible_severe"]


class UncertainConfig(_Model):
    """When the model could not be trusted on an event: which of those cases a human decides."""

    # Fallback reasons that send the decision to a human (while the interim action applies)
    # when the model's best answer and the rules' answer differ; [] (the default): the rules
    # decide. (A disagreement goes to a human with `on_disagreement: ask`.)
    ask: list[UncertainReason] = Field(default_factory=list)
    # Only an unsure answer among these actions is worth a human's time (e.g. [escalate]);
    # null: any answer more severe than the rules'.
    actions: list[str] | None = None
    # What applies while such a decision waits; null: the rules' answer.
    interim: str | None = None
    # A model that answers the default rule's action ("nothing to do") while giving one of
    # `actions` at least this share is not taken at its word (outcome possible_severe): a
    # wrong "nothing to do" is silent, a needless question is cheap. null: off.
    severe_share: float | None = Field(default=None, gt=0, le=1)


class HandlerConfig(_Model):
    action: str
    type: Literal["log", "exec"] = "log"
    argv: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=10.0, gt=0, le=600)

    @model_validator(mode="after")
    def _check(self) -> HandlerConfig:
        if self.type == "exec" and not self.argv:
            raise ValueError("an exec handler needs argv (the command to run)")
        return self


class SkillConfig(_Model):
    name: Name
    description: str = ""
    input: dict[str, FieldSpec] = Field(min_length=1)
    actions: list[str] = Field(min_length=1)
    deadline_ms: float = Field(default=200.0, gt=0, le=600_000)
    cascade: list[StageConfig] = Field(default_factory=list)
    rules: list[RuleConfig] = Field(min_length=1)
    guards: list[GuardConfig] = Field(default_factory=list)
    approval: ApprovalConfig = ApprovalConfig()
    handlers: list[HandlerConfig] = Field(default_factory=list)
    max_event_bytes: int = Field(default=65536, ge=64, le=16 * 1024 * 1024)
    # The rules run on every decision; when an acting model's answer differs from theirs:
    # model (it stands), rules (they decide), safer (the more severe by `severity`), ask (a human).
    on_disagreement: Literal["model", "rules", "safer", "ask"] = "model"
    # The actions from least to most severe (for `safer`, and for what a human is asked about);
    # default: the order of `actions`.
    severity: list[str] | None = None
    uncertain: UncertainConfig = UncertainConfig()
    # Keys of this node's own fleet state (nodes/<node id>/<key>) that its decisions set (issue 16).
    fleet_state: list[FleetStateWrite] = Field(default_factory=list, max_length=64)

    def severity_of(self, action: str) -> int:
        """Rank of ``action`` in the severity order (higher is more severe)."""
        return (self.severity or self.actions).index(action)

    def safer(self, a: str, b: str) -> str:
        """The more severe of two actions (``a`` on a tie)."""
        return b if self.severity_of(b) > self.severity_of(a) else a

    @model_validator(mode="after")
    def _check(self) -> SkillConfig:
        actions = set(self.actions)
        if len(actions) != len(self.actions):
            raise ValueError("actions must be unique")
        for field_name in self.input:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", field_name):
                raise ValueError(f"input field {field_name!r} is not a valid identifier")
            if field_name in ("action", "skill", "node", "event_id"):
                raise ValueError(f"input field {field_name!r} is a reserved name")

        def need(value: str | None, where: str) -> None:
            if value is not None and value not in actions:
                raise ValueError(f"{where}: unknown action {value!r} (known: {', '.join(self.actions)})")

        for i, stage in enumerate(self.cascade):
            for label, action in stage.map.items():
                need(action, f"cascade[{i}].map.{label}")
        defaults = [i for i, r in enumerate(self.rules) if r.default]
        if not defaults:
            raise ValueError("rules need a default rule (the last rule, with `default: true`)")
        if defaults != [len(self.rules) - 1]:
            raise ValueError("exactly one rule may be the default, and it must be the last rule")
        for i, rule in enumerate(self.rules):
            need(rule.action, f"rules[{i}].action")
        for i, guard in enumerate(self.guards):
            need(guard.action, f"guards[{i}].action")
        for a in self.approval.actions:
            need(a, "approval.actions")
        if self.approval.actions and self.approval.interim is None:
            raise ValueError("approval.interim is required when approval.actions is set")
        for key in ("interim", "on_timeout", "on_reject"):
            need(getattr(self.approval, key), f"approval.{key}")
        for i, handler in enumerate(self.handlers):
            need(handler.action, f"handlers[{i}].action")
        for i, write in enumerate(self.fleet_state):
            need(write.action, f"fleet_state[{i}].action")
        if self.severity is not None and sorted(self.severity) != sorted(self.actions):
            raise ValueError(f"severity must list every action exactly once (actions: {', '.join(self.actions)})")
        need(self.uncertain.interim, "uncertain.interim")
        if self.uncertain.interim is not None and self.uncertain.interim in self.approval.actions:
            raise ValueError(f"uncertain.interim: {self.uncertain.interim!r} itself waits for approval (approval.actions); it cannot apply meanwhile")
        for a in self.uncertain.actions or ():
            need(a, "uncertain.actions")
        if self.uncertain.severe_share is not None and not self.uncertain.actions:
            raise ValueError("uncertain.severe_share needs uncertain.actions: the actions too severe to leave unasked")
        return self


class Config(_Model):
    node: NodeConfig = Field(default_factory=NodeConfig)
    lifecycle: LifecycleConfig = LifecycleConfig()
    mqtt: MqttConfig = MqttConfig()
    mesh: MeshConfig = MeshConfig()
    trust: TrustConfig = TrustConfig()
    state: StateConfig = StateConfig()
    daemon: DaemonConfig = DaemonConfig()
    metrics: MetricsConfig = MetricsConfig()
    models: list[ModelConfig] = Field(default_factory=list)
    skills: list[SkillConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Config:
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate model names: {', '.join(sorted(dup))}")
        skills = [s.name for s in self.skills]
        dup = {n for n in skills if skills.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate skill names: {', '.join(sorted(dup))}")
        for skill in self.skills:
            for stage in skill.cascade:
                if stage.model not in names:
                    raise ValueError(
                        f"skill {skill.name!r}: cascade model {stage.model!r} is not declared under models"
                        f" (declared: {', '.join(names) or 'none'})"
                    )
        acted = {st.model for sk in self.skills for st in sk.cascade if not st.shadow}
        for skill in self.skills:
            for i, stage in enumerate(skill.cascade):
                if stage.shadow and stage.model in acted:
                    raise ValueError(
                        f"skill {skill.name!r}: cascade[{i}] is a shadow of model {stage.model!r}, which an acted stage"
                        " also uses; they would share one worker (declare the shadow's own model, e.g. the canary version)"
                    )
                model = next(m for m in self.models if m.name == stage.model)
                read = model.prompt.fields if isinstance(model, LlamaModelConfig) else model.fields if isinstance(model, EmbeddingModelConfig) else None
                if read is not None:
                    missing = [f for f in read if f not in skill.input]
                    if missing:
                        raise ValueError(
                            f"skill {skill.name!r}: model {model.name!r} puts field(s) {', '.join(missing)} in its prompt,"
                            f" which the skill's input does not have (known: {', '.join(skill.input)})"
                        )
        for skill in self.skills:
            if skill.deadline_ms <= self.daemon.deadline_reserve_ms:
                raise ValueError(
                    f"skill {skill.name!r}: deadline_ms ({skill.deadline_ms:g}) must exceed daemon.deadline_reserve_ms"
                    f" ({self.daemon.deadline_reserve_ms:g}), or no model could ever answer"
                )
        sim = self.daemon.simulator
        if sim.enabled and sim.skill is not None and sim.skill not in skills:
            raise ValueError(f"daemon.simulator.skill {sim.skill!r} is not a skill")
        return self

    def skill(self, name: str) -> SkillConfig:
        """The skill called ``name``; ConfigError naming the known ones otherwise."""
        for s in self.skills:
            if s.name == name:
                return s
        raise ConfigError(f"unknown skill {name!r} (known: {', '.join(s.name for s in self.skills)})")

    def model(self, name: str) -> OnnxModelConfig | DelayModelConfig | LlamaModelConfig | EmbeddingModelConfig:
        """The model called ``name``."""
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"unknown model {name!r}")

    @property
    def data_dir(self) -> Path:
        return Path(os.path.normpath(self.node.data_dir))

    @property
    def socket_path(self) -> Path:
        if self.daemon.socket:
            return Path(self.daemon.socket)
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        return Path(runtime) / "agentd.sock" if runtime else self.data_dir / "agentd.sock"


_MODEL_BY_TAG: dict[str, type[BaseModel]] = {
    "onnx": OnnxModelConfig, "delay": DelayModelConfig, "llama_cpp": LlamaModelConfig, "embedding": EmbeddingModelConfig,
}
