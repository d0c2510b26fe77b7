"""TensorDict keys shared by envs, collectors and losses (DESIGN.md, "Conventions")."""

OBSERVATION = ("agents", "observation")
ACTION = ("agents", "action")
ACTION_MASK = ("agents", "action_mask")
LOG_PROB = ("agents", "log_prob")
ADVANTAGE = ("agents", "advantage")
VALUE_TARGET = ("agents", "value_target")
VALUE = ("agents", "state_value")  # the old critic's V, [*batch, N], written with the advantages
STATE = "state"
REWARD = "reward"
EPISODE_RETURN = "episode_return"
RNN_STATE = "agents_rnn_state"  # top level [E, N, H]: a nested spec under "agents" breaks TorchRL's collector buffers
IS_INIT = "is_init"
FACTOR = "factor"  # [*batch, 1]: product of already-updated agents' ratios (ALGORITHMS.md section 1, Sequential)
