"""The course's notebook side: ``key_result``, and the runner's names for older imports.

A notebook publishes its key result by calling ``key_result("...")`` in a cell tagged
``key-result``; the course runner (``tlcourse.course_runner``, planned by ``tlcourse.course_plan``,
outputs kept by ``tlcourse.course_outputs``) reads that line back from the executed notebook.
The runner's public names are re-exported here: ``from tlcourse.course import run_course``
keeps working.
"""

from __future__ import annotations

from .course_outputs import clean_notebook, refresh_outputs  # noqa: F401  (re-exported)
from .course_plan import (  # noqa: F401  (re-exported)
    CHECK_MARKER,
    ENV_SMOKE,
    ENV_WEIGHTS,
    KERNEL_NAME,
    KEY_RESULT_PREFIX,
    NEEDS_PRETRAINED,
    NOTEBOOK_GLOB,
    SMOKE_PARAMETERS,
    Job,
    check_output_folder,
    check_parameter_names,
    dataset_needed,
    declared_parameters,
    ensure_dataset,
    find_notebooks,
    needs_pretrained,
    notebooks_dir,
    parse_value,
    plan,
)
from .course_runner import (  # noqa: F401  (re-exported)
    Result,
    ipc_kernel_manager,
    kernel_command,
    read_key_result,
    run_course,
    run_notebook,
    summary_table,
)
from .params import check_parameter_values, parameter_problem  # noqa: F401  (re-exported: course -p)


def key_result(text: str) -> None:
    """Print the notebook's key result in the line format the course runner looks for."""
    print(f"{KEY_RESULT_PREFIX}{text}")
