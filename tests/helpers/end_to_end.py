"""Helpers shared by the unit and integration tests of end_to_end."""



def _args(bench, run_dir, epochs=1, extra=()):
    return [
        "fit", "--config", "configs/embedded/badnet.yaml",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_epochs", str(epochs),
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.embedded", "null",
        "--data.init_args.train_shards", bench.pretrain_urls,
        "--data.init_args.eval.directory", bench.eval_dir,
        "--data.init_args.batch_size", "32",
        "--data.init_args.num_workers", "1",
        "--data.init_args.poison.rate", "0.1",
        "--model.init_args.optimizer.warmup_steps", "5",
        *extra,
    ]
