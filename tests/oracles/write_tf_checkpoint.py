"""Run with TensorFlow's Python: writes tensors from an .npz as a TF1 Saver checkpoint, the way OpenAI
saved GPT-2 (variables named model/h0/attn/c_attn/w ...). Usage: write_tf_checkpoint.py TENSORS.npz OUT_DIR"""
import sys

import numpy as np
import tensorflow as tf

tensors = np.load(sys.argv[1])
tf.compat.v1.disable_eager_execution()
with tf.compat.v1.Graph().as_default():
    variables = [tf.compat.v1.get_variable(name, initializer=tensors[name]) for name in tensors.files]
    saver = tf.compat.v1.train.Saver(variables)
    with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        saver.save(session, f"{sys.argv[2]}/model.ckpt")
