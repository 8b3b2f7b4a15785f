"""`nanotune search`: an Optuna study over nano-batch pipelines on an interference-aware performance model
built from a profile, validated on the engine when a GPU is present.

    profiledata  a profile's alone-times (interpolated over size and SM budget) and pair slowdowns
    perfmodel    one iteration's time for a plan and a batch (simulated streams, profiled slowdowns)
    capacity     KV-cache capacity and the steady-state batch a workload reaches
    replay       the engine's scheduler replayed on a finite trace (exact compositions, no GPU)
    space        the search space and the plan builder
    objective    predicted throughput / TPOT of one trial
    study        storage, samplers, resume, progress
    validate     the best plans on the real engine (GPU)
    resolve      model names, profile lookup (explicit, reference by GPU, fresh), workloads
    output/plots results/<run-id>/: plan, study, result.json, Optuna plots and the Gantt
    run          the entry point: search(SearchConfig) -> (result, run_dir)
"""
