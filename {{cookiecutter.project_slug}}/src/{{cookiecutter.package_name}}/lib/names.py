"""Every name the project accepts, defined once. The params schema (params.py), the constructors and their
errors (models.py, task.py, train.py) and the template's pre-generation hook all read them from here, so a
name added here is valid everywhere and a name missing here is refused everywhere with the same list.

Plain data and no imports: the pre-generation hook reads this file before the project exists.

    >>> "Unet" in SEGMENTATION_ARCHITECTURES and "resnet18" in ENCODERS
    True
"""

TASKS = ("segmentation", "classification")

# segmentation-models-pytorch architectures. DPT is left out: it needs a timm ViT encoder ("tu-...") that
# ENCODERS doesn't provide.
SEGMENTATION_ARCHITECTURES = ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Linknet",
                              "MAnet", "PAN", "UPerNet", "Segformer")
# Encoders the project tests; any name from smp.encoders.get_encoder_names() can be added.
ENCODERS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "efficientnet-b0", "mobileone_s0",
            "densenet121", "vgg11_bn")
# torchvision classifiers (torchvision.models.get_model names).
CLASSIFICATION_ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small",
                                "mobilenet_v3_large", "densenet121", "efficientnet_b0", "shufflenet_v2_x1_0",
                                "regnet_y_400mf")

LOSSES = {"segmentation": ("dice", "bce", "focal", "dice_bce"), "classification": ("ce",)}

# params.yaml name -> (torch.optim class, the keyword arguments params.yaml may give it besides lr)
OPTIMIZERS = {
    "adamw": ("AdamW", ("weight_decay", "betas", "eps", "amsgrad")),
    "adam": ("Adam", ("weight_decay", "betas", "eps", "amsgrad")),
    "sgd": ("SGD", ("weight_decay", "momentum", "dampening", "nesterov")),
}
# params.yaml name -> (torch.optim.lr_scheduler class or None, its keyword arguments in params.yaml)
SCHEDULERS = {
    "cosine": ("CosineAnnealingLR", ()),  # T_max = train.epochs
    "plateau": ("ReduceLROnPlateau", ("factor", "patience")),  # steps on the validation metric (mode max)
    "step": ("StepLR", ("step_size", "gamma")),
    "none": (None, ()),
}

# Common corruptions (robustness.corruptions; built in corruptions.py) and ImageNet-C's five severities.
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "brightness", "contrast", "jpeg")
CORRUPTION_SEVERITIES = (1, 2, 3, 4, 5)

# MLflow tracking URIs the project can talk to (MLflow's own store schemes).
TRACKING_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql://", "postgresql+psycopg://", "mysql://",
                    "mysql+pymysql://", "mssql://", "databricks")

# Credentials written into a URI: the password of user:password@host, and secret query parameters. A URI is
# printed and logged with these masked (store.mask), and params.yaml / the template's answers refuse them.
URI_PASSWORD = r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:?#]*):[^/@?#]*@"
URI_SECRET_QUERY = r"(?i)([?&](?:password|passwd|pwd|token|secret|access_key|secret_key)=)[^&#]*"

SEVERITIES = ("low", "medium", "high", "critical")
PROMOTE = ("if_better", "always", "never")
